//! The command line: verbs, flags, help texts with examples.

use clap::{Args, Parser, Subcommand, ValueEnum};

const MAIN_AFTER: &str = "\
Examples:
  starling login --url http://127.0.0.1:8000 --token sat_...
  starling namespace create demo
  starling broker create sensors --namespace demo --expiration 86400
  starling broker issue sensors -n demo --client-id dev-1 --pub 'sensors/#'
  starling broker list -n demo --output json

The API URL and token come from --url/--token, else STARLING_API_URL/STARLING_API_TOKEN, else
the login saved by `starling login`.

Exit codes:
  0  success
  1  the API refused the request (its message and code are printed)
  2  usage error (bad flags or arguments, no API URL or token)
  3  network error (the API could not be reached, or its answer could not be read)
  4  local error (the login file could not be read or written)";

/// The control plane of Starling, from the command line.
#[derive(Debug, Parser)]
#[command(name = "starling", version, after_help = MAIN_AFTER)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The API's base URL (for example http://127.0.0.1:8000).
    #[arg(long, global = true, env = "STARLING_API_URL")]
    pub(crate) url: Option<String>,
    /// The API token (sat_...). Prefer the environment or `starling login` over this flag, which
    /// other users of the machine can see in the process list.
    #[arg(
        long,
        global = true,
        env = "STARLING_API_TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,
    /// How to print results: a table for people, JSON for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
    /// Seconds to wait for the API's answer.
    #[arg(long, global = true, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) timeout: u64,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns.
    Table,
    /// The API's JSON, one document.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Save the API URL and token for later commands (in the user's config directory, mode 0600).
    #[command(after_help = "\
Examples:
  starling login --url http://127.0.0.1:8000 --token sat_...
  echo \"$TOKEN\" | starling login --url https://api.example.com --token -

The token is checked against the API (GET /v1/account) before it is saved, and never printed.")]
    Login,
    /// Remove the saved login.
    #[command(after_help = "Examples:\n  starling logout")]
    Logout,
    /// Show the account and the API token in use.
    #[command(after_help = "Examples:\n  starling whoami\n  starling whoami -o json")]
    Whoami,
    /// Namespaces: create, list, describe, delete.
    #[command(subcommand)]
    Namespace(NamespaceCmd),
    /// Brokers: create, list, describe, update, delete; issue and revoke client tokens; keys.
    #[command(subcommand)]
    Broker(BrokerCmd),
    /// API tokens of the account (admin role): list, create, delete.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  starling completion bash > ~/.local/share/bash-completion/completions/starling
  starling completion zsh > \"${fpath[1]}/_starling\"
  starling completion fish > ~/.config/fish/completions/starling.fish")]
    Completion {
        /// The shell.
        shell: Shell,
    },
}

/// Shells with completions.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Shell {
    /// bash
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NamespaceCmd {
    /// Create a namespace.
    #[command(after_help = "Examples:\n  starling namespace create demo --description 'the demo'")]
    Create {
        /// RFC 1035 label (letters, digits, `-`), unique.
        name: String,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// List the namespaces.
    #[command(
        after_help = "Examples:\n  starling namespace list\n  starling namespace list -o json"
    )]
    List,
    /// Show one namespace.
    #[command(after_help = "Examples:\n  starling namespace describe demo")]
    Describe {
        /// The namespace.
        name: String,
    },
    /// Delete an empty namespace.
    #[command(after_help = "Examples:\n  starling namespace delete demo")]
    Delete {
        /// The namespace.
        name: String,
    },
}

/// A broker in a namespace.
#[derive(Debug, Args)]
pub(crate) struct BrokerRef {
    /// The broker.
    pub(crate) broker: String,
    /// Its namespace.
    #[arg(long, short = 'n')]
    pub(crate) namespace: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BrokerCmd {
    /// Create a broker (its secret, for the internal state route, is shown once).
    #[command(
        after_help = "Examples:\n  starling broker create sensors -n demo\n  starling broker create sensors -n demo --expiration 86400 --on-publish-url https://hook.example.com/"
    )]
    Create {
        #[command(flatten)]
        at: BrokerRef,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        /// Token lifetime ceiling in seconds (-1 for none).
        #[arg(long, allow_hyphen_values = true)]
        expiration: Option<i64>,
        /// The on-publish hook: every message is sent there first.
        #[arg(long)]
        on_publish_url: Option<String>,
    },
    /// List the brokers of a namespace.
    #[command(after_help = "Examples:\n  starling broker list -n demo")]
    List {
        /// The namespace.
        #[arg(long, short = 'n')]
        namespace: String,
    },
    /// Show one broker.
    #[command(after_help = "Examples:\n  starling broker describe sensors -n demo")]
    Describe {
        #[command(flatten)]
        at: BrokerRef,
    },
    /// Change a broker's description, token lifetime ceiling or hook.
    #[command(
        after_help = "Examples:\n  starling broker update sensors -n demo --expiration 3600\n  starling broker update sensors -n demo --expiration -1 --on-publish-url ''"
    )]
    Update {
        #[command(flatten)]
        at: BrokerRef,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        /// Token lifetime ceiling in seconds; -1 removes it.
        #[arg(long, allow_hyphen_values = true)]
        expiration: Option<i64>,
        /// The on-publish hook; an empty value removes it.
        #[arg(long)]
        on_publish_url: Option<String>,
    },
    /// Delete a broker.
    #[command(after_help = "Examples:\n  starling broker delete sensors -n demo")]
    Delete {
        #[command(flatten)]
        at: BrokerRef,
    },
    /// Issue client tokens (MQTT password; the username is ignored).
    #[command(after_help = "\
Examples:
  starling broker issue sensors -n demo --client-id dev-1 --client-id dev-2
  starling broker issue sensors -n demo --number 5 --expiration 3600
  starling broker issue sensors -n demo --client-id dev-1 --pub 'sensors/dev-1/#' --sub 'commands/dev-1'
  starling broker issue sensors -n demo --topic-acl '{\"pub\":[\"a/#\"],\"sub\":[]}' -o json

Without --topic-acl, --pub or --sub the token may publish and subscribe to every topic (#).")]
    Issue {
        #[command(flatten)]
        at: BrokerRef,
        /// A client id (repeat for several; one token each). Without it the API makes ids.
        #[arg(long = "client-id")]
        client_ids: Vec<String>,
        /// How many tokens (1 to 100), when no --client-id is given.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        number: Option<u32>,
        /// The topic ACL as JSON ({"pub":[...],"sub":[...]}) or `#` for every topic.
        #[arg(long, conflicts_with_all = ["publish", "subscribe"])]
        topic_acl: Option<String>,
        /// A topic filter the token may publish to (repeatable).
        #[arg(long = "pub")]
        publish: Vec<String>,
        /// A topic filter the token may subscribe to (repeatable).
        #[arg(long = "sub")]
        subscribe: Vec<String>,
        /// Lifetime in seconds (-1: none, within the broker's ceiling).
        #[arg(long, allow_hyphen_values = true)]
        expiration: Option<i64>,
    },
    /// Revoke tokens by their jti.
    #[command(after_help = "Examples:\n  starling broker revoke sensors -n demo 01J...")]
    Revoke {
        #[command(flatten)]
        at: BrokerRef,
        /// The jti values.
        #[arg(required = true)]
        jti: Vec<String>,
    },
    /// Lift revocations.
    #[command(after_help = "Examples:\n  starling broker unrevoke sensors -n demo 01J...")]
    Unrevoke {
        #[command(flatten)]
        at: BrokerRef,
        /// The jti values.
        #[arg(required = true)]
        jti: Vec<String>,
    },
    /// List the live revocations.
    #[command(after_help = "Examples:\n  starling broker show-revocations sensors -n demo")]
    ShowRevocations {
        #[command(flatten)]
        at: BrokerRef,
    },
    /// Show the public keys (JWKS) that verify the broker's tokens and hook requests.
    #[command(after_help = "Examples:\n  starling broker public-keys sensors -n demo -o json")]
    PublicKeys {
        #[command(flatten)]
        at: BrokerRef,
    },
    /// Rotate the signing keys (the old ones keep verifying until the printed time).
    #[command(after_help = "Examples:\n  starling broker rotate-keys sensors -n demo")]
    RotateKeys {
        #[command(flatten)]
        at: BrokerRef,
    },
}

/// API token roles.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum RoleArg {
    /// Read objects.
    Read,
    /// Change namespaces and brokers, issue and revoke tokens.
    Write,
    /// Manage API tokens too.
    Admin,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokensCmd {
    /// List the account's API tokens (never the tokens themselves).
    #[command(after_help = "Examples:\n  starling tokens list")]
    List,
    /// Create an API token (shown once).
    #[command(
        after_help = "Examples:\n  starling tokens create ci --role write\n  TOKEN=$(starling tokens create ci --role read -o json | jq -r .token)"
    )]
    Create {
        /// A name for people.
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Delete an API token.
    #[command(after_help = "Examples:\n  starling tokens delete 01J...")]
    Delete {
        /// The token's id (from `starling tokens list`).
        id: String,
    },
}
