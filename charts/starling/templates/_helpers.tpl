{{/* Chart name. */}}
{{- define "starling.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource-name prefix. */}}
{{- define "starling.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "starling.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "starling.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "starling.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: starling
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "starling.selector" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "starling.operator.name" -}}{{ include "starling.fullname" . }}-operator{{- end -}}
{{- define "starling.api.name" -}}{{ include "starling.fullname" . }}-api{{- end -}}
{{- define "starling.api.internalName" -}}{{ include "starling.fullname" . }}-api-internal{{- end -}}
{{- define "starling.nats.name" -}}{{ include "starling.fullname" . }}-nats{{- end -}}
{{/* The Secret with the brokers' shared NATS credentials: nats.auth.existingSecret; empty
without one (the installed NATS then gives each Broker an account and user of its own). */}}
{{- define "starling.nats.authSecret" -}}
{{- .Values.nats.auth.existingSecret -}}
{{- end -}}
{{/* Whether the operator runs the installed NATS's decentralized auth: an account and a user
per Broker (nats.install.enabled without nats.auth.existingSecret). */}}
{{- define "starling.nats.accounts" -}}
{{- if and .Values.nats.install.enabled (not .Values.nats.auth.existingSecret) -}}true{{- end -}}
{{- end -}}
{{/* The Secret with the NATS operator and system account keys (created by the operator). */}}
{{- define "starling.nats.keysSecret" -}}{{ include "starling.nats.name" . }}-keys{{- end -}}
{{/* The Secret with the NATS servers' auth configuration (written by the operator). */}}
{{- define "starling.nats.configSecret" -}}{{ include "starling.nats.name" . }}-auth-config{{- end -}}
{{/* Whether the installed NATS serves TLS with certificates the operator issues. */}}
{{- define "starling.nats.installTls" -}}
{{- if and .Values.nats.install.enabled .Values.nats.install.tls.enabled -}}true{{- end -}}
{{- end -}}
{{/* The installed NATS's CA (certificate and key, created by the operator, read by it only),
its servers' certificate (issued by the operator, mounted by the NATS pods) and the CA
certificate alone (written by the operator, copied to every Broker). */}}
{{- define "starling.nats.caSecret" -}}{{ include "starling.nats.name" . }}-ca{{- end -}}
{{- define "starling.nats.serverTlsSecret" -}}{{ include "starling.nats.name" . }}-tls{{- end -}}
{{- define "starling.nats.clientTlsSecret" -}}{{ include "starling.nats.name" . }}-client-tls{{- end -}}
{{/* The Secret each Broker's NATS CA (and client certificate) is copied from. */}}
{{- define "starling.nats.tlsSecret" -}}
{{- if include "starling.nats.installTls" . -}}
{{- include "starling.nats.clientTlsSecret" . -}}
{{- else -}}
{{- .Values.nats.tls.existingSecret -}}
{{- end -}}
{{- end -}}
{{- define "starling.nats.urls" -}}
{{- if .Values.nats.install.enabled -}}
{{- $name := include "starling.nats.name" . -}}
{{- $scheme := ternary "tls" "nats" (eq (include "starling.nats.installTls" .) "true") -}}
{{- $urls := list -}}
{{- range $i, $_ := until (int .Values.nats.install.replicas) -}}
{{- $urls = append $urls (printf "%s://%s-%d.%s-headless.%s.svc:4222" $scheme $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- join "," .Values.nats.urls -}}
{{- end -}}
{{- end -}}
{{- define "starling.postgresql.name" -}}{{ include "starling.fullname" . }}-postgresql{{- end -}}

{{- define "starling.adminToken.secret" -}}
{{- default (printf "%s-admin-token" (include "starling.fullname" .)) .Values.api.adminToken.existingSecret -}}
{{- end -}}
{{- define "starling.kek.secret" -}}
{{- default (printf "%s-kek" (include "starling.fullname" .)) .Values.api.keyEncryptionKey.existingSecret -}}
{{- end -}}
{{- define "starling.database.secret" -}}
{{- default (printf "%s-database" (include "starling.fullname" .)) .Values.api.database.existingSecret -}}
{{- end -}}

{{- define "starling.operator.image" -}}
{{ .Values.operator.image.repository }}:{{ default .Chart.AppVersion .Values.operator.image.tag }}
{{- end -}}
{{- define "starling.api.image" -}}
{{ .Values.api.image.repository }}:{{ default .Chart.AppVersion .Values.api.image.tag }}
{{- end -}}
{{- define "starling.broker.image" -}}
{{ default (printf "ghcr.io/starling-mqtt/starling-broker:%s" .Chart.AppVersion) .Values.operator.brokerImage }}
{{- end -}}

{{/* The Secrets the operator generates once when missing (STARLING_OPERATOR_GENERATE_SECRETS):
a JSON list of {name, data: {key: template with {random}}, labels}. */}}
{{- define "starling.generatedSecrets" -}}
{{- $list := list }}
{{- $labels := dict "app.kubernetes.io/part-of" "starling" "app.kubernetes.io/managed-by" "starling-operator" }}
{{- if not .Values.api.adminToken.existingSecret }}
{{- $list = append $list (dict "name" (include "starling.adminToken.secret" .) "data" (dict .Values.api.adminToken.key "stk_{random}") "labels" $labels) }}
{{- end }}
{{- if not .Values.api.keyEncryptionKey.existingSecret }}
{{- $list = append $list (dict "name" (include "starling.kek.secret" .) "data" (dict .Values.api.keyEncryptionKey.key "{random}") "labels" $labels) }}
{{- end }}
{{- if and .Values.postgresql.enabled (not .Values.api.database.existingSecret) }}
{{- $url := printf "postgres://%s:{random}@%s:5432/%s" .Values.postgresql.username (include "starling.postgresql.name" .) .Values.postgresql.database }}
{{- $list = append $list (dict "name" (include "starling.database.secret" .) "data" (dict "POSTGRES_PASSWORD" "{random}" .Values.api.database.key $url) "labels" $labels) }}
{{- end }}
{{- toJson $list }}
{{- end -}}

{{/* The rules the operator needs on Brokers and their objects. */}}
{{- define "starling.operator.rules" -}}
- apiGroups: ["starling.dev"]
  resources: ["brokers"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["starling.dev"]
  resources: ["brokers/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["starling.dev"]
  resources: ["brokers/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps", "secrets", "persistentvolumeclaims"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch"]
# Read only, for status.endpoints: what exposes a Broker's Service.
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["list", "watch"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes", "tlsroutes"]
  verbs: ["list", "watch"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways"]
  verbs: ["get"]
{{- if .Values.networkPolicy.enabled }}
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch"]
{{- end }}
{{- end -}}
