//! Which storage engine keeps the broker's state: redb against fjall on the workload that
//! matters to the store.
//!
//! - `group_commit/N`: N small records (a 40-byte key, a 200-byte value, as a queued QoS 1
//!   message of a sensor) written and made durable (fsync) in one commit (N = 1, 16, 128, 1024), the way the store's
//!   writer commits everything that waited while the previous commit ran. Throughput is in
//!   records per second.
//! - `restart_scan`: open a database holding 100,000 such records and read them all, as the
//!   broker does before it reports ready.
//!
//! `cargo bench -p starling-broker --bench store_engines`; the figures and the choice are in
//! `broker/ARCHITECTURE.md` ("Storage").

use std::path::Path;

use redb::ReadableTable as _;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const TABLE: redb::TableDefinition<'_, &[u8], &[u8]> = redb::TableDefinition::new("state");
const VALUE: [u8; 200] = [7; 200];
const SCAN_RECORDS: u64 = 100_000;

fn key(i: u64) -> Vec<u8> {
    format!("tenant-0001/s/client-{:08}/q/{:012}", i % 1000, i).into_bytes()
}

struct Redb(redb::Database);

impl Redb {
    fn open(dir: &Path) -> Self {
        Redb(redb::Database::create(dir.join("state.redb")).expect("redb"))
    }

    fn commit(&self, from: u64, n: u64) {
        let tx = self.0.begin_write().expect("begin");
        {
            let mut t = tx.open_table(TABLE).expect("table");
            for i in from..from + n {
                t.insert(key(i).as_slice(), VALUE.as_slice())
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }

    fn scan(&self) -> u64 {
        let tx = self.0.begin_read().expect("read");
        let t = tx.open_table(TABLE).expect("table");
        let mut n = 0;
        for row in t.iter().expect("iter") {
            let (k, v) = row.expect("row");
            n += (k.value().len() + v.value().len() > 0) as u64;
        }
        n
    }
}

struct Fjall {
    keyspace: fjall::Keyspace,
    part: fjall::PartitionHandle,
}

impl Fjall {
    fn open(dir: &Path) -> Self {
        let keyspace = fjall::Config::new(dir.join("fjall"))
            .manual_journal_persist(true)
            .open()
            .expect("fjall");
        let part = keyspace
            .open_partition("state", fjall::PartitionCreateOptions::default())
            .expect("partition");
        Fjall { keyspace, part }
    }

    fn commit(&self, from: u64, n: u64) {
        let mut batch = self
            .keyspace
            .batch()
            .durability(Some(fjall::PersistMode::SyncAll));
        for i in from..from + n {
            batch.insert(&self.part, key(i), VALUE.as_slice());
        }
        batch.commit().expect("commit");
    }

    fn scan(&self) -> u64 {
        let mut n = 0;
        for row in self.part.iter() {
            let (k, v) = row.expect("row");
            n += (k.len() + v.len() > 0) as u64;
        }
        n
    }
}

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("group_commit");
    group.sample_size(20);
    for n in [1u64, 16, 128, 1024] {
        group.throughput(Throughput::Elements(n));
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Redb::open(dir.path());
        let mut next = 0;
        group.bench_with_input(BenchmarkId::new("redb", n), &n, |b, &n| {
            b.iter(|| {
                db.commit(next, n);
                next += n;
            })
        });
        drop(db);
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Fjall::open(dir.path());
        let mut next = 0;
        group.bench_with_input(BenchmarkId::new("fjall", n), &n, |b, &n| {
            b.iter(|| {
                db.commit(next, n);
                next += n;
            })
        });
    }
    group.finish();
}

fn restart_scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("restart_scan");
    group.sample_size(10);
    group.throughput(Throughput::Elements(SCAN_RECORDS));
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = Redb::open(dir.path());
        for from in (0..SCAN_RECORDS).step_by(10_000) {
            db.commit(from, 10_000);
        }
    }
    group.bench_function("redb", |b| {
        b.iter(|| {
            let db = Redb::open(dir.path());
            assert_eq!(db.scan(), SCAN_RECORDS);
        })
    });
    {
        let db = Fjall::open(dir.path());
        for from in (0..SCAN_RECORDS).step_by(10_000) {
            db.commit(from, 10_000);
        }
    }
    group.bench_function("fjall", |b| {
        b.iter(|| {
            let db = Fjall::open(dir.path());
            assert_eq!(db.scan(), SCAN_RECORDS);
        })
    });
    group.finish();
}

criterion_group!(benches, group_commit, restart_scan);
criterion_main!(benches);
