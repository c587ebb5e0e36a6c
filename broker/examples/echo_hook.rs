//! An on-publish hook that answers every request with its own body: every message delivered
//! unchanged. For measuring what the hook costs (`scripts/bench-hook.sh`).
//!
//! ```text
//! echo_hook ADDR                 serve on ADDR (default 127.0.0.1:9400)
//! echo_hook --write-key PATH     write a fresh private JWK for the broker's hook.key_file
//! ```

use axum::body::Bytes;
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, path] = args.as_slice() {
        if flag == "--write-key" {
            let key = starling_token::SigningKey::generate().map_err(std::io::Error::other)?;
            let jwk = serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": key.public_jwk().x,
                "d": URL_SAFE_NO_PAD.encode(key.seed()),
            });
            return std::fs::write(path, jwk.to_string());
        }
    }
    let addr = args
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:9400".into());
    let app = axum::Router::new().route("/", post(|body: Bytes| async move { body }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("echo hook on http://{}/", listener.local_addr()?);
    axum::serve(listener, app).await
}
