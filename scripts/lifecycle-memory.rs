// Heap cost per connection of the token lifecycle (docs/performance.md, "Token lifecycle and
// disconnect-everywhere"). Standalone, std only, outside the workspace (it needs `unsafe` for its
// counting allocator, which the workspace forbids):
//
//   rustc -O --edition 2021 scripts/lifecycle-memory.rs -o /tmp/lifecycle-memory && /tmp/lifecycle-memory
//
// Heap cost per connection of the user room (socketioxide-core 0.20 CoreLocalAdapter's two maps,
// replicated exactly: std HashMap/HashSet, Room = Cow<'static, str>, Sid = 16 bytes), of a local
// user index, and of the expiry queue (BTreeSet<(u64, Sid)>). A counting global allocator.
use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

struct Counting;
static BYTES: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 { BYTES.fetch_add(l.size() as isize, Relaxed); BLOCKS.fetch_add(1, Relaxed); System.alloc(l) }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) { BYTES.fetch_sub(l.size() as isize, Relaxed); BLOCKS.fetch_sub(1, Relaxed); System.dealloc(p, l) }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 { BYTES.fetch_add(n as isize - l.size() as isize, Relaxed); System.realloc(p, l, n) }
}
#[global_allocator]
static A: Counting = Counting;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Sid([u8; 16]);
type Room = Cow<'static, str>;

#[derive(Default)]
struct Adapter { rooms: HashMap<Room, HashSet<Sid>>, sockets: HashMap<Sid, HashSet<Room>> }
impl Adapter {
    fn add_all(&mut self, sid: Sid, rooms: Vec<Room>) {
        for room in rooms {
            self.rooms.entry(room.clone()).or_default().insert(sid);
            self.sockets.entry(sid).or_default().insert(room);
        }
    }
}
fn sid(i: usize) -> Sid { let mut b = [0u8; 16]; b[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9E3779B97F4A7C15).to_le_bytes()); Sid(b) }
fn snap() -> (isize, isize) { (BYTES.load(Relaxed), BLOCKS.load(Relaxed)) }
fn report(what: &str, n: usize, before: (isize, isize), after: (isize, isize)) {
    let (b, k) = (after.0 - before.0, after.1 - before.1);
    println!("{what:<58} {:>7.1} B requested + {:>4.2} allocations (~{:>5.1} B with 16 B malloc overhead each) per connection",
        b as f64 / n as f64, k as f64 / n as f64, (b + 16 * k) as f64 / n as f64);
}

fn main() {
    let n = 15_000;
    for (label, uid) in [("short ids (user-123)", false), ("uuid ids (36 chars)", true)] {
        let id = |i: usize| if uid { format!("{:08x}-0000-4000-8000-{:012x}", i, i * 7919) } else { format!("user-{i}") };
        // Channel rooms only (the state before), then the user room added on top.
        let mut a = Adapter::default();
        for i in 0..n { a.add_all(sid(i), vec![Cow::Owned(format!("channel:ch-{}", i % 100))]); }
        let before = snap();
        for i in 0..n { a.add_all(sid(i), vec![Cow::Owned(format!("user:{}", id(i)))]); }
        report(&format!("user room, {label}, socket in a channel"), n, before, snap());
        drop(a);
        let mut a = Adapter::default();
        let before = snap();
        for i in 0..n { a.add_all(sid(i), vec![Cow::Owned(format!("user:{}", id(i)))]); }
        report(&format!("user room, {label}, socket in no channel"), n, before, snap());
        drop(a);
        // The alternative: a local index user -> sockets.
        let before = snap();
        let mut index: HashMap<Box<str>, Vec<Sid>> = HashMap::new();
        for i in 0..n { index.entry(id(i).into_boxed_str()).or_default().push(sid(i)); }
        report(&format!("local index HashMap<Box<str>, Vec<Sid>>, {label}"), n, before, snap());
        drop(index);
    }
    // The expiry queue: deadlines mostly increasing (tokens minted over time), and random.
    let before = snap();
    let mut q: BTreeSet<(u64, Sid)> = BTreeSet::new();
    for i in 0..n { q.insert((1_800_000_000 + i as u64 / 10, sid(i))); }
    report("expiry queue BTreeSet<(u64, Sid)>, increasing deadlines", n, before, snap());
    drop(q);
    let before = snap();
    let mut q: BTreeSet<(u64, Sid)> = BTreeSet::new();
    for i in 0..n { q.insert((1_800_000_000 + (i as u64).wrapping_mul(2654435761) % 86_400, sid(i))); }
    report("expiry queue BTreeSet<(u64, Sid)>, random deadlines", n, before, snap());
}
