//! The queries, written once for both dialects and expanded for each pool type by
//! [`impl_store!`]. They use only SQL that Postgres and SQLite both accept: `$n` parameters,
//! `ON CONFLICT DO NOTHING`, `LOWER()`, integer times.
//!
//! A store type using the macro has a `pool` field and two inherent methods: `announce_in_tx`
//! (called inside the transaction of every change a broker must see; Postgres sends `NOTIFY`
//! there, so it is delivered exactly on commit) and `announce_committed` (called after commit;
//! SQLite broadcasts in-process there).

/// Removes, for broker `$1`, the revocations and issuance records of tokens that can no longer
/// verify because the key that signed them left the key set; a revocation whose key is unknown
/// (a `jti` this api did not issue, or whose record was collected) goes once every key the
/// broker had when it was made is gone (key times are microseconds, revocation times seconds).
pub(crate) const SWEEP_GONE_KEYS: [&str; 2] = [
    "DELETE FROM revocations WHERE broker_id = $1 AND (\
       (kid IS NOT NULL AND kid NOT IN (SELECT kid FROM signing_keys WHERE broker_id = $1)) \
       OR (kid IS NULL AND created_at * 1000000 < (SELECT MIN(created_at) FROM signing_keys WHERE broker_id = $1)))",
    "DELETE FROM issued_credentials WHERE broker_id = $1 AND kid NOT IN (SELECT kid FROM signing_keys WHERE broker_id = $1)",
];

/// Columns of a broker read, joined with its namespace's name.
pub(crate) const BROKER_COLUMNS: &str = "b.id, b.account_id, b.namespace_id, n.name AS namespace_name, \
     b.name, b.description, b.auth_type, b.expiration, b.on_publish_url, b.limits, b.managed_by, \
     b.endpoint, b.ws_endpoint, b.version, b.created_at, b.modified_at";

/// Implements [`crate::store::Store`] for `$store` (with `pool: $pool`) whose rows are `$row`.
macro_rules! impl_store {
    ($store:ty, $row:ty) => {
        use sqlx::Row as _;
        use $crate::store::sql::{BROKER_COLUMNS, SWEEP_GONE_KEYS};
        use $crate::store::revocation_horizon;
        use $crate::store::{
            Account, ApiTokenRecord, AuditEntry, BoxFut, Broker, BrokerState, Change, IssuedCredential,
            IssuedRecord, KeyRecord, Namespace, Page, Result, Revocation, Store, StoreError,
        };

        fn ns_from_row(r: &$row) -> Result<Namespace> {
            Ok(Namespace {
                id: r.try_get("id")?,
                account_id: r.try_get("account_id")?,
                name: r.try_get("name")?,
                description: r.try_get("description")?,
                created_at: r.try_get("created_at")?,
                modified_at: r.try_get("modified_at")?,
            })
        }

        fn broker_from_row(r: &$row) -> Result<Broker> {
            Ok(Broker {
                id: r.try_get("id")?,
                account_id: r.try_get("account_id")?,
                namespace_id: r.try_get("namespace_id")?,
                namespace_name: r.try_get("namespace_name")?,
                name: r.try_get("name")?,
                description: r.try_get("description")?,
                auth_type: r.try_get("auth_type")?,
                expiration: r.try_get("expiration")?,
                on_publish_url: r.try_get("on_publish_url")?,
                limits: r.try_get("limits")?,
                managed_by: r.try_get("managed_by")?,
                endpoint: r.try_get("endpoint")?,
                ws_endpoint: r.try_get("ws_endpoint")?,
                version: r.try_get("version")?,
                created_at: r.try_get("created_at")?,
                modified_at: r.try_get("modified_at")?,
            })
        }

        fn key_from_row(r: &$row) -> Result<KeyRecord> {
            let status: String = r.try_get("status")?;
            Ok(KeyRecord {
                id: r.try_get("id")?,
                broker_id: r.try_get("broker_id")?,
                kid: r.try_get("kid")?,
                x: r.try_get("x")?,
                sealed_seed: r.try_get("sealed_seed")?,
                status: $crate::store::key_status(&status)?,
                created_at: r.try_get("created_at")?,
                retire_at: r.try_get("retire_at")?,
            })
        }

        fn revocation_from_row(r: &$row) -> Result<Revocation> {
            Ok(Revocation { jti: r.try_get("jti")?, expires_at: r.try_get("expires_at")?, kid: r.try_get("kid")? })
        }

        fn token_from_row(r: &$row) -> Result<ApiTokenRecord> {
            let role: String = r.try_get("role")?;
            Ok(ApiTokenRecord {
                id: r.try_get("id")?,
                account_id: r.try_get("account_id")?,
                name: r.try_get("name")?,
                role: $crate::store::role(&role)?,
                token_hash: r.try_get("token_hash")?,
                system: r.try_get("system")?,
                created_at: r.try_get("created_at")?,
            })
        }

        fn page<T>(mut items: Vec<T>, limit: u32, name: impl Fn(&T) -> String) -> Page<T> {
            let limit = limit as usize;
            let more = items.len() > limit;
            items.truncate(limit);
            let next_after = if more { items.last().map(name) } else { None };
            Page { items, next_after }
        }

        impl Store for $store {
            fn ping(&self) -> BoxFut<'_, Result<()>> {
                Box::pin(async move {
                    sqlx::query("SELECT 1").execute(&self.pool).await?;
                    Ok(())
                })
            }

            fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
                self.changes_tx.subscribe()
            }

            fn ensure_account<'a>(&'a self, a: &'a Account) -> BoxFut<'a, Result<()>> {
                Box::pin(async move {
                    sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                        .bind(&a.id).bind(&a.name).bind(a.created_at)
                        .execute(&self.pool).await?;
                    Ok(())
                })
            }

            fn create_account<'a>(&'a self, a: &'a Account) -> BoxFut<'a, Result<()>> {
                Box::pin(async move {
                    sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3)")
                        .bind(&a.id).bind(&a.name).bind(a.created_at)
                        .execute(&self.pool).await?;
                    Ok(())
                })
            }

            fn get_account<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<Account>>> {
                Box::pin(async move {
                    let row = sqlx::query("SELECT id, name, created_at FROM accounts WHERE id = $1")
                        .bind(id).fetch_optional(&self.pool).await?;
                    row.map(|r| Ok(Account { id: r.try_get("id")?, name: r.try_get("name")?, created_at: r.try_get("created_at")? }))
                        .transpose()
                })
            }

            fn put_api_token<'a>(&'a self, t: &'a ApiTokenRecord, upsert: bool) -> BoxFut<'a, Result<()>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    if upsert {
                        sqlx::query("DELETE FROM api_tokens WHERE id = $1").bind(&t.id).execute(&mut *tx).await?;
                    }
                    sqlx::query("INSERT INTO api_tokens (id, account_id, name, role, token_hash, system, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                        .bind(&t.id).bind(&t.account_id).bind(&t.name).bind(t.role.as_str())
                        .bind(&t.token_hash).bind(t.system).bind(t.created_at)
                        .execute(&mut *tx).await?;
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn find_api_token<'a>(&'a self, hash: &'a str) -> BoxFut<'a, Result<Option<ApiTokenRecord>>> {
                Box::pin(async move {
                    let row = sqlx::query("SELECT id, account_id, name, role, token_hash, system, created_at FROM api_tokens WHERE token_hash = $1")
                        .bind(hash).fetch_optional(&self.pool).await?;
                    row.as_ref().map(token_from_row).transpose()
                })
            }

            fn list_api_tokens<'a>(&'a self, account_id: &'a str, after: Option<&'a str>, limit: u32) -> BoxFut<'a, Result<Page<ApiTokenRecord>>> {
                Box::pin(async move {
                    let rows = sqlx::query("SELECT id, account_id, name, role, token_hash, system, created_at FROM api_tokens WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3")
                        .bind(account_id).bind(after.unwrap_or("")).bind(i64::from(limit) + 1)
                        .fetch_all(&self.pool).await?;
                    let items = rows.iter().map(token_from_row).collect::<Result<Vec<_>>>()?;
                    Ok(page(items, limit, |t| t.id.clone()))
                })
            }

            fn delete_api_token<'a>(&'a self, account_id: &'a str, id: &'a str) -> BoxFut<'a, Result<()>> {
                Box::pin(async move {
                    let done = sqlx::query("DELETE FROM api_tokens WHERE account_id = $1 AND id = $2")
                        .bind(account_id).bind(id).execute(&self.pool).await?;
                    if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
                })
            }

            fn create_namespace<'a>(&'a self, ns: &'a Namespace) -> BoxFut<'a, Result<()>> {
                Box::pin(async move {
                    sqlx::query("INSERT INTO namespaces (id, account_id, name, name_lower, description, created_at, modified_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                        .bind(&ns.id).bind(&ns.account_id).bind(&ns.name).bind(ns.name.to_lowercase())
                        .bind(&ns.description).bind(ns.created_at).bind(ns.modified_at)
                        .execute(&self.pool).await
                        .map_err(|e| match StoreError::from(e) {
                            StoreError::Conflict(_) => StoreError::Conflict("namespace name taken"),
                            other => other,
                        })?;
                    Ok(())
                })
            }

            fn get_namespace<'a>(&'a self, account_id: &'a str, name: &'a str) -> BoxFut<'a, Result<Option<Namespace>>> {
                Box::pin(async move {
                    let row = sqlx::query("SELECT id, account_id, name, description, created_at, modified_at FROM namespaces WHERE account_id = $1 AND name_lower = $2")
                        .bind(account_id).bind(name.to_lowercase()).fetch_optional(&self.pool).await?;
                    row.as_ref().map(ns_from_row).transpose()
                })
            }

            fn list_namespaces<'a>(&'a self, account_id: &'a str, after: Option<&'a str>, limit: u32) -> BoxFut<'a, Result<Page<Namespace>>> {
                Box::pin(async move {
                    let rows = sqlx::query("SELECT id, account_id, name, description, created_at, modified_at FROM namespaces WHERE account_id = $1 AND name_lower > $2 ORDER BY name_lower LIMIT $3")
                        .bind(account_id).bind(after.unwrap_or("")).bind(i64::from(limit) + 1)
                        .fetch_all(&self.pool).await?;
                    let items = rows.iter().map(ns_from_row).collect::<Result<Vec<_>>>()?;
                    Ok(page(items, limit, |n| n.name.to_lowercase()))
                })
            }

            fn delete_namespace<'a>(&'a self, account_id: &'a str, name: &'a str) -> BoxFut<'a, Result<()>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    let row = sqlx::query("SELECT id FROM namespaces WHERE account_id = $1 AND name_lower = $2")
                        .bind(account_id).bind(name.to_lowercase()).fetch_optional(&mut *tx).await?;
                    let Some(row) = row else { return Err(StoreError::NotFound) };
                    let id: String = row.try_get("id")?;
                    let brokers: i64 = sqlx::query("SELECT COUNT(*) AS n FROM brokers WHERE namespace_id = $1")
                        .bind(&id).fetch_one(&mut *tx).await?.try_get("n")?;
                    if brokers > 0 {
                        return Err(StoreError::NotEmpty);
                    }
                    sqlx::query("DELETE FROM namespaces WHERE id = $1").bind(&id).execute(&mut *tx).await
                        .map_err(|e| match e {
                            sqlx::Error::Database(ref db) if db.is_foreign_key_violation() => StoreError::NotEmpty,
                            other => StoreError::from(other),
                        })?;
                    tx.commit().await.map_err(|e| match e {
                        sqlx::Error::Database(ref db) if db.is_foreign_key_violation() => StoreError::NotEmpty,
                        other => StoreError::from(other),
                    })?;
                    Ok(())
                })
            }

            fn create_broker<'a>(&'a self, b: &'a Broker, secret_hash: &'a str, keys: &'a [KeyRecord], hook_key: Option<&'a KeyRecord>) -> BoxFut<'a, Result<()>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    sqlx::query("INSERT INTO brokers (id, account_id, namespace_id, name, name_lower, description, auth_type, expiration, on_publish_url, limits, managed_by, endpoint, ws_endpoint, secret_hash, version, created_at, modified_at) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)")
                        .bind(&b.id).bind(&b.account_id).bind(&b.namespace_id).bind(&b.name).bind(b.name.to_lowercase())
                        .bind(&b.description).bind(&b.auth_type).bind(b.expiration).bind(&b.on_publish_url)
                        .bind(&b.limits).bind(&b.managed_by).bind(&b.endpoint).bind(&b.ws_endpoint).bind(secret_hash).bind(b.version)
                        .bind(b.created_at).bind(b.modified_at)
                        .execute(&mut *tx).await
                        .map_err(|e| match e {
                            sqlx::Error::Database(ref db) if db.is_foreign_key_violation() => StoreError::NotFound,
                            other => match StoreError::from(other) {
                                StoreError::Conflict(_) => StoreError::Conflict("broker name taken"),
                                other => other,
                            },
                        })?;
                    for k in keys {
                        insert_key(&mut *tx, k).await?;
                    }
                    if let Some(k) = hook_key {
                        insert_hook_key(&mut *tx, k).await?;
                    }
                    self.announce_in_tx(&mut tx, &b.id).await?;
                    tx.commit().await?;
                    self.announce_committed(&b.id);
                    Ok(())
                })
            }

            fn get_broker<'a>(&'a self, account_id: &'a str, namespace: &'a str, name: &'a str) -> BoxFut<'a, Result<Option<Broker>>> {
                Box::pin(async move {
                    let q = format!("SELECT {BROKER_COLUMNS} FROM brokers b JOIN namespaces n ON n.id = b.namespace_id \
                                     WHERE b.account_id = $1 AND n.name_lower = $2 AND b.name_lower = $3");
                    let row = sqlx::query(&q).bind(account_id).bind(namespace.to_lowercase()).bind(name.to_lowercase())
                        .fetch_optional(&self.pool).await?;
                    row.as_ref().map(broker_from_row).transpose()
                })
            }

            fn get_broker_by_id<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<Broker>>> {
                Box::pin(async move {
                    let q = format!("SELECT {BROKER_COLUMNS} FROM brokers b JOIN namespaces n ON n.id = b.namespace_id WHERE b.id = $1");
                    let row = sqlx::query(&q).bind(id).fetch_optional(&self.pool).await?;
                    row.as_ref().map(broker_from_row).transpose()
                })
            }

            fn list_brokers<'a>(&'a self, namespace_id: &'a str, after: Option<&'a str>, limit: u32) -> BoxFut<'a, Result<Page<Broker>>> {
                Box::pin(async move {
                    let q = format!("SELECT {BROKER_COLUMNS} FROM brokers b JOIN namespaces n ON n.id = b.namespace_id \
                                     WHERE b.namespace_id = $1 AND b.name_lower > $2 ORDER BY b.name_lower LIMIT $3");
                    let rows = sqlx::query(&q).bind(namespace_id).bind(after.unwrap_or("")).bind(i64::from(limit) + 1)
                        .fetch_all(&self.pool).await?;
                    let items = rows.iter().map(broker_from_row).collect::<Result<Vec<_>>>()?;
                    Ok(page(items, limit, |b| b.name.to_lowercase()))
                })
            }

            fn update_broker<'a>(&'a self, b: &'a Broker, now_micros: i64) -> BoxFut<'a, Result<Broker>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    let done = sqlx::query("UPDATE brokers SET description = $1, expiration = $2, on_publish_url = $3, limits = $4, managed_by = $5, \
                                            endpoint = $6, ws_endpoint = $7, modified_at = $8, version = version + 1 WHERE id = $9")
                        .bind(&b.description).bind(b.expiration).bind(&b.on_publish_url).bind(&b.limits)
                        .bind(&b.managed_by).bind(&b.endpoint).bind(&b.ws_endpoint).bind(now_micros).bind(&b.id)
                        .execute(&mut *tx).await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    self.announce_in_tx(&mut tx, &b.id).await?;
                    let q = format!("SELECT {BROKER_COLUMNS} FROM brokers b JOIN namespaces n ON n.id = b.namespace_id WHERE b.id = $1");
                    let row = sqlx::query(&q).bind(&b.id).fetch_one(&mut *tx).await?;
                    let stored = broker_from_row(&row)?;
                    tx.commit().await?;
                    self.announce_committed(&b.id);
                    Ok(stored)
                })
            }

            fn delete_broker<'a>(&'a self, broker_id: &'a str, now_micros: i64) -> BoxFut<'a, Result<()>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    let row = sqlx::query("SELECT secret_hash FROM brokers WHERE id = $1")
                        .bind(broker_id).fetch_optional(&mut *tx).await?;
                    let Some(row) = row else { return Err(StoreError::NotFound) };
                    let hash: String = row.try_get("secret_hash")?;
                    sqlx::query("INSERT INTO broker_tombstones (id, secret_hash, deleted_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                        .bind(broker_id).bind(&hash).bind(now_micros).execute(&mut *tx).await?;
                    for table in ["signing_keys", "hook_keys", "issued_credentials", "revocations"] {
                        sqlx::query(&format!("DELETE FROM {table} WHERE broker_id = $1")).bind(broker_id).execute(&mut *tx).await?;
                    }
                    sqlx::query("DELETE FROM brokers WHERE id = $1").bind(broker_id).execute(&mut *tx).await?;
                    self.announce_in_tx(&mut tx, broker_id).await?;
                    tx.commit().await?;
                    self.announce_committed(broker_id);
                    Ok(())
                })
            }

            fn broker_secret_hash<'a>(&'a self, broker_id: &'a str) -> BoxFut<'a, Result<Option<(String, bool)>>> {
                Box::pin(async move {
                    if let Some(r) = sqlx::query("SELECT secret_hash FROM brokers WHERE id = $1").bind(broker_id).fetch_optional(&self.pool).await? {
                        return Ok(Some((r.try_get("secret_hash")?, false)));
                    }
                    if let Some(r) = sqlx::query("SELECT secret_hash FROM broker_tombstones WHERE id = $1").bind(broker_id).fetch_optional(&self.pool).await? {
                        return Ok(Some((r.try_get("secret_hash")?, true)));
                    }
                    Ok(None)
                })
            }

            fn set_broker_secret<'a>(&'a self, broker_id: &'a str, hash: &'a str) -> BoxFut<'a, Result<()>> {
                Box::pin(async move {
                    let done = sqlx::query("UPDATE brokers SET secret_hash = $1 WHERE id = $2")
                        .bind(hash).bind(broker_id).execute(&self.pool).await?;
                    if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
                })
            }

            fn list_keys<'a>(&'a self, broker_id: &'a str) -> BoxFut<'a, Result<Vec<KeyRecord>>> {
                Box::pin(async move {
                    let rows = sqlx::query("SELECT id, broker_id, kid, x, sealed_seed, status, created_at, retire_at FROM signing_keys WHERE broker_id = $1 ORDER BY created_at, id")
                        .bind(broker_id).fetch_all(&self.pool).await?;
                    rows.iter().map(key_from_row).collect()
                })
            }

            fn rotate_keys<'a>(&'a self, broker_id: &'a str, new_next: &'a KeyRecord, new_hook: &'a KeyRecord, retire_at: i64, now_secs: i64) -> BoxFut<'a, Result<()>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    // Locks the broker row first, so that concurrent rotations run one after the other.
                    let done = sqlx::query("UPDATE brokers SET version = version + 1 WHERE id = $1").bind(broker_id).execute(&mut *tx).await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    sqlx::query("DELETE FROM signing_keys WHERE broker_id = $1 AND status = 'retiring' AND retire_at <= $2")
                        .bind(broker_id).bind(now_secs).execute(&mut *tx).await?;
                    for q in SWEEP_GONE_KEYS {
                        sqlx::query(q).bind(broker_id).execute(&mut *tx).await?;
                    }
                    sqlx::query("UPDATE signing_keys SET status = 'retiring', retire_at = $2 WHERE broker_id = $1 AND status = 'current'")
                        .bind(broker_id).bind(retire_at).execute(&mut *tx).await?;
                    sqlx::query("UPDATE signing_keys SET status = 'current' WHERE broker_id = $1 AND status = 'next'")
                        .bind(broker_id).execute(&mut *tx).await?;
                    insert_key(&mut *tx, new_next).await?;
                    sqlx::query("DELETE FROM hook_keys WHERE broker_id = $1 AND status = 'retiring' AND retire_at <= $2")
                        .bind(broker_id).bind(now_secs).execute(&mut *tx).await?;
                    sqlx::query("UPDATE hook_keys SET status = 'retiring', retire_at = $2 WHERE broker_id = $1 AND status = 'current'")
                        .bind(broker_id).bind(retire_at).execute(&mut *tx).await?;
                    insert_hook_key(&mut *tx, new_hook).await?;
                    self.announce_in_tx(&mut tx, broker_id).await?;
                    tx.commit().await?;
                    self.announce_committed(broker_id);
                    Ok(())
                })
            }

            fn collect_retired_keys<'a>(&'a self, now_secs: i64) -> BoxFut<'a, Result<u64>> {
                Box::pin(async move {
                    let rows = sqlx::query("SELECT broker_id FROM signing_keys WHERE status = 'retiring' AND retire_at <= $1 \
                                            UNION SELECT broker_id FROM hook_keys WHERE status = 'retiring' AND retire_at <= $1")
                        .bind(now_secs).fetch_all(&self.pool).await?;
                    let mut removed = 0;
                    for row in rows {
                        let broker_id: String = row.try_get("broker_id")?;
                        let mut tx = self.pool.begin().await?;
                        sqlx::query("UPDATE brokers SET version = version + 1 WHERE id = $1").bind(&broker_id).execute(&mut *tx).await?;
                        let done = sqlx::query("DELETE FROM signing_keys WHERE broker_id = $1 AND status = 'retiring' AND retire_at <= $2")
                            .bind(&broker_id).bind(now_secs).execute(&mut *tx).await?;
                        for q in SWEEP_GONE_KEYS {
                            sqlx::query(q).bind(&broker_id).execute(&mut *tx).await?;
                        }
                        let hooks = sqlx::query("DELETE FROM hook_keys WHERE broker_id = $1 AND status = 'retiring' AND retire_at <= $2")
                            .bind(&broker_id).bind(now_secs).execute(&mut *tx).await?;
                        self.announce_in_tx(&mut tx, &broker_id).await?;
                        tx.commit().await?;
                        self.announce_committed(&broker_id);
                        removed += done.rows_affected() + hooks.rows_affected();
                    }
                    Ok(removed)
                })
            }

            fn list_hook_keys<'a>(&'a self, broker_id: &'a str) -> BoxFut<'a, Result<Vec<KeyRecord>>> {
                Box::pin(async move {
                    let rows = sqlx::query("SELECT id, broker_id, kid, x, sealed_seed, status, created_at, retire_at FROM hook_keys WHERE broker_id = $1 ORDER BY created_at, id")
                        .bind(broker_id).fetch_all(&self.pool).await?;
                    rows.iter().map(key_from_row).collect()
                })
            }

            fn ensure_hook_key<'a>(&'a self, broker_id: &'a str, candidate: &'a KeyRecord) -> BoxFut<'a, Result<bool>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    // Locks the broker row first, so that a rotation and this run one after the other.
                    let done = sqlx::query("UPDATE brokers SET version = version + 1 WHERE id = $1").bind(broker_id).execute(&mut *tx).await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    let has: i64 = sqlx::query("SELECT COUNT(*) AS n FROM hook_keys WHERE broker_id = $1 AND status = 'current'")
                        .bind(broker_id).fetch_one(&mut *tx).await?.try_get("n")?;
                    if has > 0 {
                        // Nothing changed: the version bump is rolled back with the transaction.
                        return Ok(false);
                    }
                    insert_hook_key(&mut *tx, candidate).await?;
                    self.announce_in_tx(&mut tx, broker_id).await?;
                    tx.commit().await?;
                    self.announce_committed(broker_id);
                    Ok(true)
                })
            }

            fn brokers_without_hook_key<'a>(&'a self, limit: u32) -> BoxFut<'a, Result<Vec<String>>> {
                Box::pin(async move {
                    let rows = sqlx::query("SELECT id FROM brokers WHERE id NOT IN (SELECT broker_id FROM hook_keys WHERE status = 'current') ORDER BY id LIMIT $1")
                        .bind(i64::from(limit)).fetch_all(&self.pool).await?;
                    rows.iter().map(|r| Ok(r.try_get::<String, _>("id")?)).collect()
                })
            }

            fn record_credentials<'a>(&'a self, broker_id: &'a str, issued: &'a [IssuedCredential]) -> BoxFut<'a, Result<()>> {
                Box::pin(async move {
                    // One multi-row INSERT per 100 records (6 parameters each stays far below
                    // both databases' parameter limits).
                    let mut tx = self.pool.begin().await?;
                    for chunk in issued.chunks(100) {
                        let mut q = sqlx::QueryBuilder::<<$row as sqlx::Row>::Database>::new(
                            "INSERT INTO issued_credentials (jti, broker_id, client_id, kid, issued_at, expires_at) ",
                        );
                        q.push_values(chunk, |mut b, c| {
                            b.push_bind(c.jti.clone()).push_bind(broker_id.to_string()).push_bind(c.client_id.clone())
                                .push_bind(c.kid.clone()).push_bind(c.issued_at).push_bind(c.expires_at);
                        });
                        q.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn list_issued<'a>(&'a self, broker_id: &'a str, client_id: Option<&'a str>, before: Option<(i64, &'a str)>, limit: u32) -> BoxFut<'a, Result<Page<IssuedRecord>>> {
                Box::pin(async move {
                    let (before_at, before_jti) = before.unwrap_or((i64::MAX, ""));
                    // Without a cursor every record is before (i64::MAX, ''): issue times are
                    // unix seconds.
                    let rows = sqlx::query("SELECT c.jti, c.client_id, c.kid, c.issued_at, c.expires_at, (r.jti IS NOT NULL) AS revoked \
                                            FROM issued_credentials c LEFT JOIN revocations r ON r.broker_id = c.broker_id AND r.jti = c.jti \
                                            WHERE c.broker_id = $1 AND ($2 = '' OR c.client_id = $2) \
                                              AND (c.issued_at < $3 OR (c.issued_at = $3 AND c.jti < $4)) \
                                            ORDER BY c.issued_at DESC, c.jti DESC LIMIT $5")
                        .bind(broker_id).bind(client_id.unwrap_or("")).bind(before_at).bind(before_jti).bind(i64::from(limit) + 1)
                        .fetch_all(&self.pool).await?;
                    let items = rows.iter().map(|r| Ok(IssuedRecord {
                        credential: IssuedCredential {
                            jti: r.try_get("jti")?, client_id: r.try_get("client_id")?, kid: r.try_get("kid")?,
                            issued_at: r.try_get("issued_at")?, expires_at: r.try_get("expires_at")?,
                        },
                        revoked: r.try_get("revoked")?,
                    })).collect::<Result<Vec<_>>>()?;
                    Ok(page(items, limit, |r| format!("{}:{}", r.credential.issued_at, r.credential.jti)))
                })
            }

            fn add_revocations<'a>(&'a self, broker_id: &'a str, jtis: &'a [String], max_live: u64, now_secs: i64) -> BoxFut<'a, Result<()>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    let done = sqlx::query("UPDATE brokers SET version = version + 1 WHERE id = $1").bind(broker_id).execute(&mut *tx).await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    sqlx::query("DELETE FROM revocations WHERE broker_id = $1 AND expires_at IS NOT NULL AND expires_at <= $2")
                        .bind(broker_id).bind(revocation_horizon(now_secs)).execute(&mut *tx).await?;
                    for jti in jtis {
                        sqlx::query("INSERT INTO revocations (broker_id, jti, expires_at, kid, created_at) \
                                     VALUES ($1, $2, (SELECT expires_at FROM issued_credentials WHERE jti = $2 AND broker_id = $1), \
                                             (SELECT kid FROM issued_credentials WHERE jti = $2 AND broker_id = $1), $3) ON CONFLICT DO NOTHING")
                            .bind(broker_id).bind(jti).bind(now_secs).execute(&mut *tx).await?;
                    }
                    let live: i64 = sqlx::query("SELECT COUNT(*) AS n FROM revocations WHERE broker_id = $1")
                        .bind(broker_id).fetch_one(&mut *tx).await?.try_get("n")?;
                    if u64::try_from(live).unwrap_or(u64::MAX) > max_live {
                        return Err(StoreError::RevocationCap(max_live));
                    }
                    self.announce_in_tx(&mut tx, broker_id).await?;
                    tx.commit().await?;
                    self.announce_committed(broker_id);
                    Ok(())
                })
            }

            fn list_revocations<'a>(&'a self, broker_id: &'a str, now_secs: i64) -> BoxFut<'a, Result<Vec<Revocation>>> {
                Box::pin(async move {
                    let rows = sqlx::query("SELECT jti, expires_at, kid FROM revocations WHERE broker_id = $1 AND (expires_at IS NULL OR expires_at > $2) ORDER BY created_at, jti")
                        .bind(broker_id).bind(revocation_horizon(now_secs)).fetch_all(&self.pool).await?;
                    rows.iter().map(revocation_from_row).collect()
                })
            }

            fn delete_revocations<'a>(&'a self, broker_id: &'a str, jtis: &'a [String]) -> BoxFut<'a, Result<()>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    let done = sqlx::query("UPDATE brokers SET version = version + 1 WHERE id = $1").bind(broker_id).execute(&mut *tx).await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    for jti in jtis {
                        sqlx::query("DELETE FROM revocations WHERE broker_id = $1 AND jti = $2").bind(broker_id).bind(jti).execute(&mut *tx).await?;
                    }
                    self.announce_in_tx(&mut tx, broker_id).await?;
                    tx.commit().await?;
                    self.announce_committed(broker_id);
                    Ok(())
                })
            }

            fn collect_expired<'a>(&'a self, now_secs: i64) -> BoxFut<'a, Result<u64>> {
                Box::pin(async move {
                    let horizon = revocation_horizon(now_secs);
                    let a = sqlx::query("DELETE FROM revocations WHERE expires_at IS NOT NULL AND expires_at <= $1").bind(horizon).execute(&self.pool).await?;
                    let b = sqlx::query("DELETE FROM issued_credentials WHERE expires_at IS NOT NULL AND expires_at <= $1").bind(horizon).execute(&self.pool).await?;
                    Ok(a.rows_affected() + b.rows_affected())
                })
            }

            fn broker_state<'a>(&'a self, broker_id: &'a str, now_secs: i64) -> BoxFut<'a, Result<Option<BrokerState>>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    let q = format!("SELECT {BROKER_COLUMNS} FROM brokers b JOIN namespaces n ON n.id = b.namespace_id WHERE b.id = $1");
                    let Some(row) = sqlx::query(&q).bind(broker_id).fetch_optional(&mut *tx).await? else {
                        return Ok(None);
                    };
                    let broker = broker_from_row(&row)?;
                    let keys = sqlx::query("SELECT id, broker_id, kid, x, sealed_seed, status, created_at, retire_at FROM signing_keys \
                                            WHERE broker_id = $1 AND (status <> 'retiring' OR retire_at > $2) ORDER BY created_at, id")
                        .bind(broker_id).bind(now_secs).fetch_all(&mut *tx).await?
                        .iter().map(key_from_row).collect::<Result<Vec<_>>>()?;
                    let hook_keys = sqlx::query("SELECT id, broker_id, kid, x, sealed_seed, status, created_at, retire_at FROM hook_keys \
                                                 WHERE broker_id = $1 AND (status <> 'retiring' OR retire_at > $2) ORDER BY created_at, id")
                        .bind(broker_id).bind(now_secs).fetch_all(&mut *tx).await?
                        .iter().map(key_from_row).collect::<Result<Vec<_>>>()?;
                    let revocations = sqlx::query("SELECT jti, expires_at, kid FROM revocations WHERE broker_id = $1 AND (expires_at IS NULL OR expires_at > $2) ORDER BY created_at, jti")
                        .bind(broker_id).bind(revocation_horizon(now_secs)).fetch_all(&mut *tx).await?
                        .iter().map(revocation_from_row)
                        .collect::<Result<Vec<_>>>()?;
                    tx.commit().await?;
                    Ok(Some(BrokerState { broker, keys, hook_keys, revocations }))
                })
            }

            fn audit<'a>(&'a self, e: &'a AuditEntry) -> BoxFut<'a, Result<()>> {
                Box::pin(async move {
                    sqlx::query("INSERT INTO audit_log (id, account_id, actor, action, target, at) VALUES ($1, $2, $3, $4, $5, $6)")
                        .bind(&e.id).bind(&e.account_id).bind(&e.actor).bind(&e.action).bind(&e.target).bind(e.at)
                        .execute(&self.pool).await?;
                    Ok(())
                })
            }

            fn list_audit<'a>(&'a self, account_id: &'a str, limit: u32) -> BoxFut<'a, Result<Vec<AuditEntry>>> {
                Box::pin(async move {
                    let rows = sqlx::query("SELECT id, account_id, actor, action, target, at FROM audit_log WHERE account_id = $1 ORDER BY id DESC LIMIT $2")
                        .bind(account_id).bind(i64::from(limit)).fetch_all(&self.pool).await?;
                    rows.iter().map(|r| Ok(AuditEntry {
                        id: r.try_get("id")?, account_id: r.try_get("account_id")?, actor: r.try_get("actor")?,
                        action: r.try_get("action")?, target: r.try_get("target")?, at: r.try_get("at")?,
                    })).collect()
                })
            }
        }

        async fn insert_hook_key<'c, C>(conn: C, k: &KeyRecord) -> Result<()>
        where
            C: sqlx::Executor<'c, Database = <$row as sqlx::Row>::Database>,
        {
            sqlx::query("INSERT INTO hook_keys (id, broker_id, kid, x, sealed_seed, status, created_at, retire_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(&k.id).bind(&k.broker_id).bind(&k.kid).bind(&k.x).bind(&k.sealed_seed)
                .bind(k.status.as_str()).bind(k.created_at).bind(k.retire_at)
                .execute(conn).await?;
            Ok(())
        }

        async fn insert_key<'c, C>(conn: C, k: &KeyRecord) -> Result<()>
        where
            C: sqlx::Executor<'c, Database = <$row as sqlx::Row>::Database>,
        {
            sqlx::query("INSERT INTO signing_keys (id, broker_id, kid, x, sealed_seed, status, created_at, retire_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(&k.id).bind(&k.broker_id).bind(&k.kid).bind(&k.x).bind(&k.sealed_seed)
                .bind(k.status.as_str()).bind(k.created_at).bind(k.retire_at)
                .execute(conn).await?;
            Ok(())
        }
    };
}

pub(crate) use impl_store;
