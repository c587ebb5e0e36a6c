//! `starling`: the command-line client of Starling's control plane (the native `/v1` routes).

mod args;
mod client;
mod config;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use clap::{CommandFactory as _, Parser as _};
use reqwest::Method;
use serde::Serialize;
use starling_types::rest::{
    AccountView, BrokerCreate, BrokerCreated, BrokerList, BrokerPatch, BrokerView, NamespaceCreate,
    NamespaceList, NamespaceView, OnPublish, Revocation, Role, Rotation, TokenCreate, TokenCreated,
    TokenList,
};

use args::{BrokerCmd, BrokerRef, Cli, Command, NamespaceCmd, Output, RoleArg, Shell, TokensCmd};
use client::{CallError, Client, seg};

/// How a command failed, and so the exit code.
#[derive(Debug)]
enum Failure {
    Usage(String),
    Call(CallError),
    Local(String),
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Self {
        Failure::Call(e)
    }
}

type Result<T, E = Failure> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(4);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Call(e @ CallError::Api { .. })) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(Failure::Call(e @ CallError::Network(_))) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
        Err(Failure::Local(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(4)
        }
    }
}

// === output ===

/// Prints rows as aligned columns.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut out = String::new();
        for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i + 1 == n {
                out.push_str(&cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn json<T: Serialize>(v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Failure::Local(e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn opt<T: ToString>(v: Option<T>, none: &str) -> String {
    v.map_or_else(|| none.to_string(), |v| v.to_string())
}

fn show_namespaces(out: Output, items: &[NamespaceView]) -> Result<()> {
    if out == Output::Json {
        return json(&items);
    }
    table(
        &["NAME", "ID", "CREATED", "DESCRIPTION"],
        items
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.id.clone(),
                    n.created_on.clone(),
                    n.description.clone(),
                ]
            })
            .collect(),
    );
    Ok(())
}

fn show_brokers(out: Output, items: &[BrokerView]) -> Result<()> {
    if out == Output::Json {
        return json(&items);
    }
    table(
        &["NAME", "ID", "EXPIRATION", "ENDPOINT", "HOOK", "MANAGED BY"],
        items
            .iter()
            .map(|b| {
                vec![
                    b.name.clone(),
                    b.id.clone(),
                    opt(b.expiration, "none"),
                    b.endpoint.clone(),
                    opt(b.on_publish.as_ref().and_then(|o| o.url.clone()), "-"),
                    opt(b.managed_by.as_ref().map(|m| m.marker()), "-"),
                ]
            })
            .collect(),
    );
    Ok(())
}

/// The `jti` and `exp` of a token (read from its payload, not verified: for display only).
fn claims(token: &str) -> (String, Option<i64>) {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .unwrap_or_default();
    (
        value["jti"].as_str().unwrap_or("?").to_string(),
        value["exp"].as_i64(),
    )
}

// === commands ===

struct Ctx {
    global: args::Global,
}

impl Ctx {
    fn client(&self) -> Result<Client> {
        let (url, token) = credentials(&self.global)?;
        Client::new(&url, token, Duration::from_secs(self.global.timeout)).map_err(Failure::from)
    }
}

/// URL and token: flags, then environment (clap reads both), then the saved login.
fn credentials(g: &args::Global) -> Result<(String, String)> {
    let saved = match config::path() {
        Some(p) => config::load(&p).map_err(Failure::Local)?,
        None => None,
    };
    let url = g
        .url
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| saved.as_ref().map(|l| l.url.clone()))
        .ok_or_else(|| {
            Failure::Usage(
                "no API URL: run `starling login --url <url> --token <token>`, or set STARLING_API_URL"
                    .into(),
            )
        })?;
    let token = g
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| saved.map(|l| l.token))
        .ok_or_else(|| {
            Failure::Usage(
                "no API token: run `starling login --url <url> --token <token>`, or set STARLING_API_TOKEN"
                    .into(),
            )
        })?;
    check_url(&url)?;
    Ok((url, token))
}

fn check_url(url: &str) -> Result<()> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(Failure::Usage(format!(
            "the API URL must start with http:// or https://, got {url:?}"
        )))
    }
}

async fn run(cli: Cli) -> Result<()> {
    let out = cli.global.output;
    let ctx = Ctx { global: cli.global };
    match cli.command {
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            let mut stdout = std::io::stdout();
            match shell {
                Shell::Bash => clap_complete::generate(
                    clap_complete::Shell::Bash,
                    &mut cmd,
                    "starling",
                    &mut stdout,
                ),
                Shell::Zsh => clap_complete::generate(
                    clap_complete::Shell::Zsh,
                    &mut cmd,
                    "starling",
                    &mut stdout,
                ),
                Shell::Fish => clap_complete::generate(
                    clap_complete::Shell::Fish,
                    &mut cmd,
                    "starling",
                    &mut stdout,
                ),
            }
            Ok(())
        }
        Command::Login => login(&ctx).await,
        Command::Logout => {
            let path = config::path()
                .ok_or_else(|| Failure::Local("no config directory for this user".into()))?;
            if config::remove(&path).map_err(Failure::Local)? {
                println!("removed the login in {}", path.display());
            } else {
                println!("no saved login");
            }
            Ok(())
        }
        Command::Whoami => {
            let a: AccountView = ctx.client()?.get("/v1/account", &[]).await?;
            if out == Output::Json {
                return json(&a);
            }
            table(
                &["ACCOUNT", "ACCOUNT ID", "TOKEN", "TOKEN ID", "ROLE"],
                vec![vec![
                    a.name,
                    a.id,
                    a.token.name,
                    a.token.id,
                    format!(
                        "{}{}",
                        a.token.role,
                        if a.token.bootstrap {
                            " (bootstrap)"
                        } else {
                            ""
                        }
                    ),
                ]],
            );
            Ok(())
        }
        Command::Namespace(cmd) => namespace(&ctx, out, cmd).await,
        Command::Broker(cmd) => broker(&ctx, out, cmd).await,
        Command::Tokens(cmd) => tokens(&ctx, out, cmd).await,
    }
}

async fn login(ctx: &Ctx) -> Result<()> {
    let url = ctx
        .global
        .url
        .clone()
        .ok_or_else(|| Failure::Usage("give --url (or STARLING_API_URL)".into()))?;
    check_url(&url)?;
    let mut token = ctx.global.token.clone().ok_or_else(|| {
        Failure::Usage(
            "give --token (or STARLING_API_TOKEN; `-` reads it from standard input)".into(),
        )
    })?;
    if token == "-" {
        let mut buf = String::new();
        std::io::stdin()
            .read_to_string(&mut buf)
            .map_err(|e| Failure::Local(format!("cannot read the token: {e}")))?;
        token = buf.trim().to_string();
    }
    if token.is_empty() {
        return Err(Failure::Usage("the token is empty".into()));
    }
    let client = Client::new(&url, token.clone(), Duration::from_secs(ctx.global.timeout))?;
    let account: AccountView = client.get("/v1/account", &[]).await?;
    let path =
        config::path().ok_or_else(|| Failure::Local("no config directory for this user".into()))?;
    config::save(
        &path,
        &config::Login {
            url: url.trim_end_matches('/').to_string(),
            token,
        },
    )
    .map_err(Failure::Local)?;
    println!(
        "logged in to {} as token {} ({}) of account {} ({}); saved in {}",
        url.trim_end_matches('/'),
        account.token.name,
        account.token.role,
        account.name,
        account.id,
        path.display()
    );
    Ok(())
}

async fn namespace(ctx: &Ctx, out: Output, cmd: NamespaceCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        NamespaceCmd::Create { name, description } => {
            let ns: NamespaceView = c
                .send_json(
                    Method::POST,
                    "/v1/namespaces",
                    &NamespaceCreate { name, description },
                )
                .await?;
            if out == Output::Json {
                return json(&ns);
            }
            show_namespaces(out, std::slice::from_ref(&ns))
        }
        NamespaceCmd::List => {
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let q: Vec<(&str, String)> = cursor.iter().map(|c| ("cursor", c.clone())).collect();
                let page: NamespaceList = c.get("/v1/namespaces", &q).await?;
                items.extend(page.items);
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            show_namespaces(out, &items)
        }
        NamespaceCmd::Describe { name } => {
            let ns: NamespaceView = c
                .get(&format!("/v1/namespaces/{}", seg(&name)), &[])
                .await?;
            if out == Output::Json {
                return json(&ns);
            }
            show_namespaces(out, std::slice::from_ref(&ns))
        }
        NamespaceCmd::Delete { name } => {
            c.call(
                Method::DELETE,
                &format!("/v1/namespaces/{}", seg(&name)),
                &[],
            )
            .await?;
            done(out, &format!("deleted namespace {name}"))
        }
    }
}

fn done(out: Output, what: &str) -> Result<()> {
    if out == Output::Json {
        json(&serde_json::json!({ "ok": true, "message": what }))
    } else {
        println!("{what}");
        Ok(())
    }
}

fn bpath(at: &BrokerRef) -> String {
    format!(
        "/v1/namespaces/{}/brokers/{}",
        seg(&at.namespace),
        seg(&at.broker)
    )
}

async fn broker(ctx: &Ctx, out: Output, cmd: BrokerCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        BrokerCmd::Create {
            at,
            description,
            expiration,
            on_publish_url,
        } => {
            let body = BrokerCreate {
                name: at.broker.clone(),
                description,
                expiration,
                on_publish: on_publish_url.map(|u| OnPublish { url: Some(u) }),
                ..BrokerCreate::default()
            };
            let created: BrokerCreated = c
                .send_json(
                    Method::POST,
                    &format!("/v1/namespaces/{}/brokers", seg(&at.namespace)),
                    &body,
                )
                .await?;
            if out == Output::Json {
                return json(&created);
            }
            show_brokers(out, std::slice::from_ref(&created.broker))?;
            if let Some(secret) = created.secret {
                println!(
                    "\nbroker secret (for the internal state route; shown only now): {}",
                    secret.expose()
                );
            }
            Ok(())
        }
        BrokerCmd::List { namespace } => {
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            let path = format!("/v1/namespaces/{}/brokers", seg(&namespace));
            loop {
                let q: Vec<(&str, String)> = cursor.iter().map(|c| ("cursor", c.clone())).collect();
                let page: BrokerList = c.get(&path, &q).await?;
                items.extend(page.items);
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            show_brokers(out, &items)
        }
        BrokerCmd::Describe { at } => {
            let b: BrokerView = c.get(&bpath(&at), &[]).await?;
            if out == Output::Json {
                return json(&b);
            }
            show_brokers(out, std::slice::from_ref(&b))?;
            println!("\nwebsockets  {}", b.ws_endpoint);
            if !b.description.is_empty() {
                println!("description {}", b.description);
            }
            if let Some(limits) = &b.limits {
                let text =
                    serde_json::to_string(limits).map_err(|e| Failure::Local(e.to_string()))?;
                println!("limits      {text}");
            }
            Ok(())
        }
        BrokerCmd::Update {
            at,
            description,
            expiration,
            on_publish_url,
        } => {
            if description.is_none() && expiration.is_none() && on_publish_url.is_none() {
                return Err(Failure::Usage(
                    "nothing to change: give --description, --expiration or --on-publish-url"
                        .into(),
                ));
            }
            let patch = BrokerPatch {
                description,
                expiration: expiration.map(|e| (e != -1).then_some(e)),
                on_publish: on_publish_url
                    .map(|u| (!u.is_empty()).then_some(OnPublish { url: Some(u) })),
                ..BrokerPatch::default()
            };
            let b: BrokerView = c.send_json(Method::PATCH, &bpath(&at), &patch).await?;
            if out == Output::Json {
                return json(&b);
            }
            show_brokers(out, std::slice::from_ref(&b))
        }
        BrokerCmd::Delete { at } => {
            c.call(Method::DELETE, &bpath(&at), &[]).await?;
            done(
                out,
                &format!("deleted broker {} in namespace {}", at.broker, at.namespace),
            )
        }
        BrokerCmd::Issue {
            at,
            client_ids,
            number,
            topic_acl,
            publish,
            subscribe,
            expiration,
        } => {
            let acl = match topic_acl {
                Some(a) => a,
                None if publish.is_empty() && subscribe.is_empty() => "#".to_string(),
                None => serde_json::json!({ "pub": publish, "sub": subscribe }).to_string(),
            };
            let mut q: Vec<(&str, String)> = vec![("type", "TOKEN".into()), ("topicAcl", acl)];
            if let Some(n) = number {
                q.push(("number", n.to_string()));
            }
            for id in client_ids {
                q.push(("clientid", id));
            }
            if let Some(e) = expiration {
                q.push(("expiration", e.to_string()));
            }
            let tokens: BTreeMap<String, String> =
                c.get(&format!("{}/credentials", bpath(&at)), &q).await?;
            if out == Output::Json {
                return json(&tokens);
            }
            table(
                &["CLIENT ID", "JTI", "EXPIRES", "TOKEN"],
                tokens
                    .into_iter()
                    .map(|(id, token)| {
                        let (jti, exp) = claims(&token);
                        vec![id, jti, opt(exp, "never"), token]
                    })
                    .collect(),
            );
            Ok(())
        }
        BrokerCmd::Revoke { at, jti } => {
            let q: Vec<(&str, String)> = jti.iter().map(|j| ("jti", j.clone())).collect();
            c.call(Method::POST, &format!("{}/revocations", bpath(&at)), &q)
                .await?;
            done(out, &format!("revoked {}", jti.join(", ")))
        }
        BrokerCmd::Unrevoke { at, jti } => {
            let q: Vec<(&str, String)> = jti.iter().map(|j| ("jti", j.clone())).collect();
            c.call(Method::DELETE, &format!("{}/revocations", bpath(&at)), &q)
                .await?;
            done(out, &format!("lifted the revocation of {}", jti.join(", ")))
        }
        BrokerCmd::ShowRevocations { at } => {
            let list: Vec<Revocation> = c.get(&format!("{}/revocations", bpath(&at)), &[]).await?;
            if out == Output::Json {
                return json(&list);
            }
            table(
                &["JTI", "EXPIRES", "KID"],
                list.into_iter()
                    .map(|r| vec![r.jti, opt(r.expires_at, "never"), opt(r.kid, "-")])
                    .collect(),
            );
            Ok(())
        }
        BrokerCmd::PublicKeys { at } => {
            let jwks: starling_types::jwk::Jwks =
                c.get(&format!("{}/publickeys", bpath(&at)), &[]).await?;
            if out == Output::Json {
                return json(&jwks);
            }
            table(
                &["KID", "ALG", "X"],
                jwks.keys
                    .into_iter()
                    .map(|k| vec![k.kid, k.alg, k.x])
                    .collect(),
            );
            Ok(())
        }
        BrokerCmd::RotateKeys { at } => {
            let r: Rotation = c.post_empty(&format!("{}/keys/rotate", bpath(&at))).await?;
            if out == Output::Json {
                return json(&r);
            }
            table(
                &["CURRENT", "NEXT", "RETIRING", "RETIRE AT"],
                vec![vec![
                    r.current_kid,
                    r.next_kid,
                    opt(r.retiring_kid, "-"),
                    r.retire_at_rfc3339,
                ]],
            );
            println!("\n{}", r.message);
            Ok(())
        }
    }
}

async fn tokens(ctx: &Ctx, out: Output, cmd: TokensCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        TokensCmd::List => {
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let q: Vec<(&str, String)> = cursor.iter().map(|c| ("cursor", c.clone())).collect();
                let page: TokenList = c.get("/v1/tokens", &q).await?;
                items.extend(page.items);
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            if out == Output::Json {
                return json(&items);
            }
            table(
                &["ID", "NAME", "ROLE", "CREATED"],
                items
                    .into_iter()
                    .map(|t| vec![t.id, t.name, t.role.to_string(), t.created_on])
                    .collect(),
            );
            Ok(())
        }
        TokensCmd::Create { name, role } => {
            let role = match role {
                RoleArg::Read => Role::Read,
                RoleArg::Write => Role::Write,
                RoleArg::Admin => Role::Admin,
            };
            let t: TokenCreated = c
                .send_json(Method::POST, "/v1/tokens", &TokenCreate { name, role })
                .await?;
            if out == Output::Json {
                return json(&t);
            }
            table(
                &["ID", "NAME", "ROLE", "TOKEN (shown only now)"],
                vec![vec![t.id, t.name, t.role.to_string(), t.token.into_inner()]],
            );
            Ok(())
        }
        TokensCmd::Delete { id } => {
            c.call(Method::DELETE, &format!("/v1/tokens/{}", seg(&id)), &[])
                .await?;
            done(out, &format!("deleted API token {id}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(seg("demo"), "demo");
        assert_eq!(seg("a/b?c"), "a%2Fb%3Fc");
    }
}
