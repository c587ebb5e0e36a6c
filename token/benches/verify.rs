//! Token verification cost (target: at most 100 µs per token).

use criterion::{Criterion, criterion_group, criterion_main};
use starling_token::{Claims, Jwks, SigningKey, TopicAcl, Verifier};

fn bench_verify(c: &mut Criterion) {
    let keys: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate().unwrap()).collect();
    let verifier = Verifier::new(&Jwks {
        keys: keys.iter().map(|k| k.public_jwk()).collect(),
    })
    .unwrap();
    let claims = Claims {
        sub: "01HZX3J4K5M6N7P8Q9R0S1T2V3".into(),
        jti: "8f14e45fceea167a5a36dedd4bea2543".into(),
        iat: 1_800_000_000,
        exp: Some(1_800_003_600),
        nbf: None,
        topic_acl: TopicAcl::Lists {
            publish: vec!["sensors/+/temp".into()],
            subscribe: vec!["alerts/#".into()],
        },
    };
    let token = keys[1].sign_claims(&claims);
    c.bench_function("verify_token", |b| {
        b.iter(|| {
            verifier
                .verify(std::hint::black_box(&token), 1_800_000_100, 5)
                .unwrap()
        })
    });
    c.bench_function("sign_token", |b| {
        b.iter(|| keys[0].sign_claims(std::hint::black_box(&claims)))
    });
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
