// Parallel loops over the machine's cores, and the BLAS thread policy.
// Policy: OpenBLAS runs single-threaded; the engine splits work (usually the batch) into chunks
// and calls sgemm (Gemm.swift) inside each chunk. This keeps both cores busy for the many small
// GEMMs of a supernet, where OpenBLAS's own threading would pay start-up per call. A loop whose
// chunks add partial sums together has one chunk per core (`chunkCount`: the core count sets its
// rounding, as it did before); a loop whose chunks are disjoint has four per core
// (`disjointChunkCount`), claimed as threads come free, which never moves a result.
// The chunks run on `WorkerPool`: workers − 1 persistent threads that, between loops, spin a
// few microseconds, then yield the core for up to ~12 ms, then park on a condition (a search step
// runs thousands of small loops back to back, with the caller's bookkeeping between them; a
// worker parked after ~50 µs woke late for the next loop, claimed its chunk late, and the caller
// waited for it: in a DARTS fmnist step's profile the caller spent a quarter of its time yielding
// and the worker ran 38 % of the samples to the caller's 61 %; yielding that long before parking
// balanced them, 50 % to 49 %, and made the step 0.83× as long). ESPALIER_WORKER_POOL=0 uses
// Dispatch's concurrentPerform instead.

import COpenBLAS
import Dispatch
import Foundation
import Synchronization

public enum Parallel {
    /// Worker count; `ESPALIER_THREADS` overrides the core count.
    public static let workers: Int = {
        if let s = ProcessInfo.processInfo.environment["ESPALIER_THREADS"], let n = Int(s), n > 0 { return n }
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }()

    /// Called once before any kernel: OpenBLAS single-threaded (we parallelise above it).
    public static let configureBLAS: Void = { openblas_set_num_threads(1) }()

    /// Chunks per worker of a loop whose chunks are disjoint: each writes its own outputs and no
    /// sum runs across chunks (elementwise passes, planes, channels). The threads claim chunks as
    /// they come free, so a thread that starts a loop late (woken late, or its core taken by the
    /// host) takes fewer of them instead of making the others wait for its half. How such a loop
    /// is split never moves a result's rounding, so the count may differ from `chunkCount`'s.
    public static let chunksPerWorker = 4

    /// Runs `body(range)` over `0..<n` split into at most `disjointChunkCount(n / grain)` contiguous
    /// chunks; `body` must not sum across chunks (see `chunksPerWorker`). Chunks smaller than
    /// `grain` are not split further. Returns when all chunks are done.
    @inline(__always)
    public static func forChunks(_ n: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
        _ = configureBLAS
        let chunks = min(disjointChunkCount(n / max(grain, 1)), n)
        if chunks <= 1 { body(0..<n); return }
        run(chunks) { k in
            let lo = n * k / chunks, hi = n * (k + 1) / chunks
            if lo < hi { body(lo..<hi) }
        }
    }

    /// body(0) … body(chunks − 1), concurrently; returns when all are done.
    @inline(__always)
    static func run(_ chunks: Int, _ body: (Int) -> Void) {
        if let pool = WorkerPool.shared { pool.run(chunks, body) } else { DispatchQueue.concurrentPerform(iterations: chunks, execute: body) }
    }

    /// Like `forChunks` but also gives the chunk index (for per-chunk scratch buffers).
    public static func forChunksIndexed(_ n: Int, chunks: Int, _ body: (Int, Range<Int>) -> Void) {
        _ = configureBLAS
        if chunks <= 1 { body(0, 0..<n); return }
        run(chunks) { k in
            let lo = n * k / chunks, hi = n * (k + 1) / chunks
            if lo < hi { body(k, lo..<hi) }
        }
    }

    /// How many chunks `forChunksIndexed` should use for `n` items when the chunks' partial sums
    /// are added together afterwards: one per worker, so the thread count sets the rounding.
    public static func chunkCount(_ n: Int) -> Int { max(1, min(workers, n)) }

    /// How many chunks a loop over `n` items whose chunks are disjoint should use (see
    /// `chunksPerWorker`): one with a single worker.
    public static func disjointChunkCount(_ n: Int) -> Int { workers == 1 ? 1 : max(1, min(workers * chunksPerWorker, n)) }
}

/// The threads behind `Parallel`'s loops. One loop at a time: the caller runs chunks too, and a
/// loop started inside a chunk (or from another thread meanwhile) runs inline on its caller.
/// A chunk is claimed by compare-and-swap on `ticket` = generation << 32 | chunk count << 16 |
/// next index: a worker that wakes late for a finished loop can never claim a chunk of the next
/// one, and the count it checks a claim against is always that generation's own.
/// Waiting (workers for a loop, the caller for the workers) spins briefly, then yields the core
/// (on a busy machine the thread being waited for may need it), then parks (workers only).
final class WorkerPool: @unchecked Sendable {
    /// nil with one worker or ESPALIER_WORKER_POOL=0.
    static let shared: WorkerPool? = {
        guard Parallel.workers > 1, ProcessInfo.processInfo.environment["ESPALIER_WORKER_POOL"] != "0" else { return nil }
        return WorkerPool(threads: Parallel.workers - 1)
    }()

    /// Pause instructions before yielding (~2 µs), and yields before parking (one `sched_yield` took
    /// 0.6 µs here, measured through Python: at most ~12 ms).
    private static let spins = 32, yields = 20000

    private final class Job { var body: ((Int) -> Void)? }
    private let job = Job()
    private let ticket = Atomic<Int>(0)      // generation << 32 | chunks << 16 | next chunk index
    private let finished = Atomic<Int>(0)    // chunks done in the current generation
    private let sleepers = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    private init(threads: Int) {
        pthread_mutex_init(lock, nil)
        pthread_cond_init(wake, nil)
        for _ in 0..<threads {
            let t = Thread { [unowned self] in self.workerLoop() }
            t.stackSize = 1 << 23
            t.start()
        }
    }

    func run(_ chunks: Int, _ body: (Int) -> Void) {
        guard chunks > 1, chunks < 1 << 16, busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            for i in 0..<chunks { body(i) }
            return
        }
        defer { busy.store(false, ordering: .releasing) }
        withoutActuallyEscaping(body) { escapable in
            job.body = escapable
            finished.store(0, ordering: .relaxed)
            let generation = (ticket.load(ordering: .relaxed) >> 32) + 1
            ticket.store(generation << 32 | chunks << 16, ordering: .sequentiallyConsistent)
            if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                pthread_mutex_lock(lock)
                pthread_cond_broadcast(wake)
                pthread_mutex_unlock(lock)
            }
            runChunks(generation: generation)
            var waited = 0
            while finished.load(ordering: .acquiring) < chunks {
                waited += 1
                if waited < Self.spins { spinPause() } else { sched_yield() }
            }
            job.body = nil   // no worker reads it again: every chunk of this generation was claimed
        }
    }

    /// Claims and runs chunks of `generation` until none is left.
    private func runChunks(generation: Int) {
        var t = ticket.load(ordering: .acquiring)
        while t >> 32 == generation, t & 0xFFFF < (t >> 16) & 0xFFFF {
            let (exchanged, now) = ticket.compareExchange(expected: t, desired: t + 1, ordering: .acquiringAndReleasing)
            if exchanged {
                job.body!(t & 0xFFFF)
                finished.wrappingAdd(1, ordering: .releasing)
                t = ticket.load(ordering: .acquiring)
            } else {
                t = now
            }
        }
    }

    private func workerLoop() {
        var seen = 0
        while true {
            var generation = ticket.load(ordering: .acquiring) >> 32
            var waited = 0
            while generation == seen {
                waited += 1
                if waited < Self.spins {
                    spinPause()
                } else if waited < Self.spins + Self.yields {
                    sched_yield()
                } else {
                    pthread_mutex_lock(lock)
                    sleepers.wrappingAdd(1, ordering: .sequentiallyConsistent)
                    generation = ticket.load(ordering: .sequentiallyConsistent) >> 32
                    while generation == seen {
                        pthread_cond_wait(wake, lock)
                        generation = ticket.load(ordering: .acquiring) >> 32
                    }
                    sleepers.wrappingSubtract(1, ordering: .sequentiallyConsistent)
                    pthread_mutex_unlock(lock)
                    break
                }
                generation = ticket.load(ordering: .acquiring) >> 32
            }
            seen = generation
            runChunks(generation: generation)
        }
    }
}

/// A CPU pause hint for spin loops.
@inline(__always)
func spinPause() {
    #if arch(x86_64)
    espalier_cpu_pause()
    #else
    sched_yield()
    #endif
}
