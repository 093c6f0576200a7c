//! logbench: durable append + per-message delete, one fdatasync per batch.
//!
//! Model (same for every engine):
//!   for batch b in 0..B:
//!       publish: append N messages (24 B key = 16 B topic + u64 BE seq,
//!                value = 36 B header + 1024 B incompressible payload), ONE sync
//!       ack:     delete the N messages of batch b-1 individually, ONE sync
//!   (acks lag publishes by one batch; the last batch is acked at the end)
//!
//! usage: logbench <engine> <batch N> <messages> <dir>
//!   engine: fjall | fjall-kv | seglog | raw | raw1 | redb
//! prints one line of key=value metrics.

use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOPIC: &[u8; 16] = b"orders.created\0\0";
const HDR: usize = 36;
const PAYLOAD: usize = 1024;
const VAL: usize = HDR + PAYLOAD;
const SEG_BYTES: u64 = 64 << 20;

// ---------------------------------------------------------------- metrics

fn rusage(who: i32) -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
fn proc_cpu() -> f64 {
    rusage(libc::RUSAGE_SELF)
}
fn proc_sys() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_stime.tv_sec as f64 + ru.ru_stime.tv_usec as f64 * 1e-6
}
fn thread_cpu() -> f64 {
    rusage(libc::RUSAGE_THREAD)
}
fn io_write_bytes() -> u64 {
    let s = fs::read_to_string("/proc/self/io").unwrap();
    for l in s.lines() {
        if let Some(v) = l.strip_prefix("write_bytes: ") {
            return v.trim().parse().unwrap();
        }
    }
    0
}
fn disk_usage(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut alloc, mut len) = (0u64, 0u64);
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                let (a, l) = disk_usage(&e.path());
                alloc += a;
                len += l;
            } else {
                alloc += m.blocks() * 512;
                len += m.len();
            }
        }
    }
    (alloc, len)
}

struct Snap {
    t: Instant,
    cpu: f64,
    sys: f64,
    tcpu: f64,
    wb: u64,
}
fn snap() -> Snap {
    Snap { t: Instant::now(), cpu: proc_cpu(), sys: proc_sys(), tcpu: thread_cpu(), wb: io_write_bytes() }
}

// ---------------------------------------------------------------- data

struct Data {
    pool: Vec<u8>,
}
impl Data {
    fn new() -> Self {
        // 4 MiB xorshift noise: incompressible (fjall defaults to lz4)
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let mut pool = vec![0u8; 4 << 20];
        for c in pool.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        Data { pool }
    }
    #[inline]
    fn key(seq: u64) -> [u8; 24] {
        let mut k = [0u8; 24];
        k[..16].copy_from_slice(TOPIC);
        k[16..].copy_from_slice(&seq.to_be_bytes());
        black_box(k)
    }
    #[inline]
    fn payload(&self, seq: u64) -> &[u8] {
        let off = (seq.wrapping_mul(4099) as usize) % (self.pool.len() - PAYLOAD);
        black_box(&self.pool[off..off + PAYLOAD])
    }
    /// header (36 B) + payload (1024 B) written into `out`
    #[inline]
    fn value_into(&self, seq: u64, out: &mut Vec<u8>) {
        let mut h = [0u8; HDR];
        h[..8].copy_from_slice(&seq.to_le_bytes()); // "timestamp"
        h[8..16].copy_from_slice(&(seq ^ 0xabcdef).to_le_bytes()); // "producer id"
        h[16..20].copy_from_slice(&(PAYLOAD as u32).to_le_bytes());
        out.extend_from_slice(&black_box(h));
        out.extend_from_slice(self.payload(seq));
    }
}

// ---------------------------------------------------------------- engines

trait Engine {
    fn publish(&mut self, d: &Data, first: u64, n: u64);
    fn ack(&mut self, first: u64, n: u64);
    fn finish(&mut self) -> String {
        String::new()
    }
    /// wait for background work the run triggered (fjall flush/compaction)
    fn settle(&mut self) {}
}

// ---- A) fjall 2.x
struct Fjall {
    ks: fjall::Keyspace,
    p: fjall::PartitionHandle,
    kv: bool,
    val: Vec<u8>,
    gc_every: u64,
    gc_cpu: f64,
    gc_runs: u64,
    acked: u64,
}
impl Fjall {
    fn open(dir: &Path, kv: bool, tuned: bool) -> Self {
        let ks = fjall::Config::new(dir).open().unwrap();
        let mut opts = fjall::PartitionCreateOptions::default();
        if tuned {
            // payloads are incompressible; bigger memtable => more insert+delete pairs die before flush
            opts = opts.compression(fjall::CompressionType::None).max_memtable_size(64 << 20);
        }
        if kv {
            opts = opts.with_kv_separation(fjall::KvSeparationOptions::default());
        }
        let p = ks.open_partition("log", opts).unwrap();
        Fjall { ks, p, kv, val: Vec::with_capacity(VAL), gc_every: 64 << 20, gc_cpu: 0.0, gc_runs: 0, acked: 0 }
    }
}
impl Engine for Fjall {
    fn publish(&mut self, d: &Data, first: u64, n: u64) {
        let mut b = fjall::Batch::with_capacity(self.ks.clone(), n as usize);
        for s in first..first + n {
            self.val.clear();
            d.value_into(s, &mut self.val);
            b.insert(&self.p, &Data::key(s)[..], &self.val[..]);
        }
        b.commit().unwrap();
        self.ks.persist(fjall::PersistMode::SyncData).unwrap();
    }
    fn ack(&mut self, first: u64, n: u64) {
        let mut b = fjall::Batch::with_capacity(self.ks.clone(), n as usize);
        for s in first..first + n {
            b.remove(&self.p, &Data::key(s)[..]);
        }
        b.commit().unwrap();
        self.ks.persist(fjall::PersistMode::SyncData).unwrap();
        // kv-separated partitions need manual value-log GC; run it every ~64 MiB of acked data
        if self.kv {
            let before = self.acked * VAL as u64 / self.gc_every;
            self.acked += n;
            if self.acked * VAL as u64 / self.gc_every != before {
                use fjall::GarbageCollection;
                let c = thread_cpu();
                self.p.gc_scan().unwrap();
                self.p.gc_drop_stale_segments().unwrap();
                self.gc_cpu += thread_cpu() - c;
                self.gc_runs += 1;
            }
        }
    }
    fn settle(&mut self) {
        let mut quiet = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = (self.ks.flushes_completed(), self.ks.compactions_completed());
        while quiet < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = (self.ks.flushes_completed(), self.ks.compactions_completed());
            if self.ks.active_compactions() == 0 && now == last {
                quiet += 1;
            } else {
                quiet = 0;
            }
            last = now;
        }
    }
    fn finish(&mut self) -> String {
        format!(
            "journal_mb={:.1} flushes={} compactions={} time_compacting_ms={} segments={} blobfiles={} journals={} gc_runs={} gc_cpu_s={:.3}",
            self.ks.journal_disk_space() as f64 / 1048576.0,
            self.ks.flushes_completed(),
            self.ks.compactions_completed(),
            self.ks.time_compacting().as_millis(),
            self.p.segment_count(),
            self.p.blob_file_count(),
            self.ks.journal_count(),
            self.gc_runs,
            self.gc_cpu
        )
    }
}

// ---- B) hand-written segment log
struct Segment {
    id: u64,
    path: PathBuf,
    max_seq: u64,
}
struct SegLog {
    dir: PathBuf,
    dirf: File,
    f: File,
    size: u64,
    cur: Segment,
    sealed: Vec<Segment>,
    next_id: u64,
    buf: Vec<u8>,
    acked_upto: u64, // exclusive
    rolls: u64,
    deleted: u64,
}
impl SegLog {
    fn open(dir: &Path) -> Self {
        let dirf = File::open(dir).unwrap();
        let path = dir.join(format!("{:016}.seg", 0));
        let f = OpenOptions::new().create(true).append(true).open(&path).unwrap();
        SegLog {
            dir: dir.into(),
            dirf,
            f,
            size: 0,
            cur: Segment { id: 0, path, max_seq: 0 },
            sealed: vec![],
            next_id: 1,
            buf: Vec::with_capacity(8 << 20),
            acked_upto: 0,
            rolls: 0,
            deleted: 0,
        }
    }
    /// record: [u32 len][u32 crc32(body)][body], body = [u8 type]...
    #[inline]
    fn push_record(buf: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
        let start = buf.len();
        buf.extend_from_slice(&[0u8; 8]);
        body(buf);
        let len = (buf.len() - start - 8) as u32;
        let crc = crc32fast::hash(&buf[start + 8..]);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
    fn write_sync(&mut self) {
        self.f.write_all(&self.buf).unwrap();
        self.f.sync_data().unwrap();
        self.size += self.buf.len() as u64;
        self.buf.clear();
        if self.size >= SEG_BYTES {
            // roll
            let path = self.dir.join(format!("{:016}.seg", self.next_id));
            let f = OpenOptions::new().create(true).append(true).open(&path).unwrap();
            self.dirf.sync_all().unwrap(); // make the new dir entry durable
            let old = std::mem::replace(&mut self.cur, Segment { id: self.next_id, path, max_seq: 0 });
            self.sealed.push(old);
            self.f = f;
            self.size = 0;
            self.next_id += 1;
            self.rolls += 1;
        }
    }
}
impl Engine for SegLog {
    fn publish(&mut self, d: &Data, first: u64, n: u64) {
        for s in first..first + n {
            Self::push_record(&mut self.buf, |b| {
                b.push(1u8);
                b.extend_from_slice(&Data::key(s));
                d.value_into(s, b);
            });
        }
        self.cur.max_seq = first + n - 1;
        self.write_sync();
    }
    fn ack(&mut self, first: u64, n: u64) {
        // acks are contiguous here; a real broker would keep a bitmap per segment
        Self::push_record(&mut self.buf, |b| {
            b.push(2u8);
            b.extend_from_slice(TOPIC);
            b.extend_from_slice(&first.to_le_bytes());
            b.extend_from_slice(&(first + n).to_le_bytes());
        });
        self.write_sync();
        self.acked_upto = first + n;
        // delete whole sealed segments whose messages are all acked (in order)
        while let Some(s) = self.sealed.first() {
            if s.max_seq < self.acked_upto {
                let _ = s.id;
                fs::remove_file(&s.path).unwrap();
                self.sealed.remove(0);
                self.deleted += 1;
            } else {
                break;
            }
        }
    }
    fn finish(&mut self) -> String {
        format!("rolls={} segments_deleted={} live_segments={}", self.rolls, self.deleted, self.sealed.len() + 1)
    }
}

// ---- C) raw disk: N x 1 KiB + fdatasync (raw1), or also a tiny ack write + fdatasync (raw)
struct Raw {
    dir: PathBuf,
    f: File,
    size: u64,
    id: u64,
    buf: Vec<u8>,
    two_syncs: bool,
}
impl Raw {
    fn open(dir: &Path, two_syncs: bool) -> Self {
        let f = OpenOptions::new().create(true).append(true).open(dir.join("raw.0")).unwrap();
        Raw { dir: dir.into(), f, size: 0, id: 0, buf: Vec::with_capacity(8 << 20), two_syncs }
    }
    fn maybe_roll(&mut self) {
        if self.size >= SEG_BYTES {
            fs::remove_file(self.dir.join(format!("raw.{}", self.id))).unwrap();
            self.id += 1;
            self.f = OpenOptions::new().create(true).append(true).open(self.dir.join(format!("raw.{}", self.id))).unwrap();
            self.size = 0;
        }
    }
}
impl Engine for Raw {
    fn publish(&mut self, d: &Data, first: u64, n: u64) {
        self.buf.clear();
        for s in first..first + n {
            self.buf.extend_from_slice(d.payload(s));
        }
        self.f.write_all(&self.buf).unwrap();
        self.f.sync_data().unwrap();
        self.size += self.buf.len() as u64;
        self.maybe_roll();
    }
    fn ack(&mut self, first: u64, n: u64) {
        if !self.two_syncs {
            return;
        }
        let mut r = [0u8; 32];
        r[..8].copy_from_slice(&first.to_le_bytes());
        r[8..16].copy_from_slice(&n.to_le_bytes());
        self.f.write_all(&black_box(r)).unwrap();
        self.f.sync_data().unwrap();
        self.size += 32;
    }
}

// ---- optional: redb 3
const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("log");
struct Redb {
    db: redb::Database,
    val: Vec<u8>,
}
impl Engine for Redb {
    fn publish(&mut self, d: &Data, first: u64, n: u64) {
        let tx = self.db.begin_write().unwrap();
        {
            let mut t = tx.open_table(T).unwrap();
            for s in first..first + n {
                self.val.clear();
                d.value_into(s, &mut self.val);
                t.insert(&Data::key(s)[..], &self.val[..]).unwrap();
            }
        }
        tx.commit().unwrap(); // default Durability::Immediate
    }
    fn ack(&mut self, first: u64, n: u64) {
        let tx = self.db.begin_write().unwrap();
        {
            let mut t = tx.open_table(T).unwrap();
            for s in first..first + n {
                t.remove(&Data::key(s)[..]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
}

// ---------------------------------------------------------------- main

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!("usage: logbench <fjall|fjall-kv|seglog|raw|raw1|redb> <N> <messages> <dir>");
        std::process::exit(2);
    }
    let engine = a[1].as_str();
    let n: u64 = a[2].parse().unwrap();
    let msgs: u64 = a[3].parse().unwrap();
    let dir = PathBuf::from(&a[4]);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let batches = (msgs / n).max(2);
    let msgs = batches * n;
    let d = Data::new();

    let mut e: Box<dyn Engine> = match engine {
        "fjall" | "fjall-kv" => Box::new(Fjall::open(&dir, engine == "fjall-kv", false)),
        "fjall-tuned" => Box::new(Fjall::open(&dir, false, true)),
        "seglog" => Box::new(SegLog::open(&dir)),
        "raw" => Box::new(Raw::open(&dir, true)),
        "raw1" => Box::new(Raw::open(&dir, false)),
        "redb" => Box::new(Redb { db: redb::Database::create(dir.join("db.redb")).unwrap(), val: Vec::with_capacity(VAL) }),
        _ => panic!("unknown engine"),
    };
    let eng = e.as_mut();

    // warm-up is not done on purpose: flush/compaction start-up is part of the cost.
    let s0 = snap();
    let (mut t_pub, mut t_ack) = (Duration::ZERO, Duration::ZERO);
    let (mut c_pub, mut c_ack) = (0.0, 0.0);
    for b in 0..batches {
        let (t, c) = (Instant::now(), thread_cpu());
        eng.publish(&d, b * n, n);
        t_pub += t.elapsed();
        c_pub += thread_cpu() - c;
        if b > 0 {
            let (t, c) = (Instant::now(), thread_cpu());
            eng.ack((b - 1) * n, n);
            t_ack += t.elapsed();
            c_ack += thread_cpu() - c;
        }
    }
    eng.ack((batches - 1) * n, n);
    let s1 = snap();

    // fjall: let background flushes/compactions that the run triggered settle, and charge them too
    eng.settle();
    let extra = eng.finish();
    let s2 = snap();
    let (alloc, len) = disk_usage(&dir);

    let wall = (s1.t - s0.t).as_secs_f64();
    let m = msgs as f64;
    println!(
        "engine={engine} N={n} msgs={msgs} wall_s={wall:.3} msgs_per_s={:.0} cpu_us_per_msg={:.3} cpu_us_incl_settle={:.3} sys_us={:.3} \
         main_thread_cpu_us={:.3} pub_cpu_us={:.3} ack_cpu_us={:.3} pub_wall_us={:.3} ack_wall_us={:.3} \
         wbytes_per_msg={:.0} wbytes_incl_settle={:.0} disk_alloc_mb={:.1} disk_len_mb={:.1} {extra}",
        m / wall,
        (s1.cpu - s0.cpu) * 1e6 / m,
        (s2.cpu - s0.cpu) * 1e6 / m,
        (s1.sys - s0.sys) * 1e6 / m,
        (s1.tcpu - s0.tcpu) * 1e6 / m,
        c_pub * 1e6 / m,
        c_ack * 1e6 / m,
        t_pub.as_secs_f64() * 1e6 / m,
        t_ack.as_secs_f64() * 1e6 / m,
        (s1.wb - s0.wb) as f64 / m,
        (s2.wb - s0.wb) as f64 / m,
        alloc as f64 / 1048576.0,
        len as f64 / 1048576.0,
    );
    drop(e);
    let _ = fs::remove_dir_all(&dir);
}
