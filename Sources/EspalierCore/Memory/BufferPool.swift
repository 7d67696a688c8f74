// The buffer pool behind `Storage`: large tensor buffers are mapped with mmap, and a freed one
// waits in a bucket of its exact (page-rounded) size for the next tensor of that size. A search
// step allocates the same shapes every step, so after the first step almost every allocation
// is a bucket hit: no page faults, no zeroing by the kernel, and no malloc fragmentation
// (glibc's heap kept ~300 MiB above the accountant's peak on the GDAS bench).
//
// With no idle buffer of the exact size, the smallest idle one of at most twice the size is lent
// instead (best fit; its extra bytes are "slack", which the accountant does not see): a forward
// pass whose shapes change from stage to stage (the zero-shot score) then reuses the previous
// stage's buffers instead of unmapping and mapping ~90 buffers per pass.
// The pool is capped by what the accountant has ever had in use at once:
//   live bytes (accountant.currentTotal) + slack + pooled bytes ≤ cap = lifetime peak + 1/16 (≤ budget),
// so real memory stays within 1/16 of the accounted peak (and under a budget). Lending a larger
// buffer leaves that sum unchanged; when a new mapping is needed and the pool is at its cap,
// idle buffers are unmapped, largest first.
// Small buffers (< `minimumBytes`) go to malloc, which handles them well.
// One pool per real accountant; like the accountant it is used from one thread.

import Foundation

final class BufferPool {
    /// Buffers below this go to malloc.
    static let minimumBytes = 64 * 1024
    static let pageBytes = 4096
    /// `ESPALIER_BUFFER_POOL=0` turns the pool off (every buffer from posix_memalign / free),
    /// for comparing against the allocator.
    static let enabled: Bool = ProcessInfo.processInfo.environment["ESPALIER_BUFFER_POOL"] != "0"

    /// Idle buffers by mapped size (a multiple of the page size).
    private var idle: [Int: [UnsafeMutableRawPointer]] = [:]
    private(set) var pooledBytes = 0
    /// Buffers lent at a larger mapped size than asked (best fit): pointer → mapped size.
    private var lentLarger: [UnsafeMutableRawPointer: Int] = [:]
    /// Σ (mapped size − asked mapped size) over those: memory in use that the accountant does not count.
    private(set) var slackBytes = 0
    private(set) var hits = 0
    private(set) var maps = 0
    private(set) var unmaps = 0

    static func mappedSize(_ bytes: Int) -> Int { (bytes + pageBytes - 1) / pageBytes * pageBytes }

    /// A buffer of at least `bytes` (64-byte aligned), or nil when the system has no memory.
    /// `live` is what the accountant has in use including this request; `cap` its `poolCap`.
    func take(bytes: Int, live: Int, cap: Int) -> UnsafeMutableRawPointer? {
        guard Self.enabled, bytes >= Self.minimumBytes else {
            var raw: UnsafeMutableRawPointer?
            return posix_memalign(&raw, 64, max(bytes, 1)) == 0 ? raw : nil
        }
        let size = Self.mappedSize(bytes)
        if var list = idle[size], let p = list.popLast() {
            idle[size] = list.isEmpty ? nil : list
            pooledBytes -= size
            hits += 1
            return p
        }
        // Best fit: the smallest idle buffer of at most twice the size (live + slack + pooled unchanged).
        if let fit = idle.keys.filter({ $0 > size && $0 <= 2 * size }).min(), var list = idle[fit], let p = list.popLast() {
            idle[fit] = list.isEmpty ? nil : list
            pooledBytes -= fit
            lentLarger[p] = fit
            slackBytes += fit - size
            hits += 1
            return p
        }
        // A new mapping: first make room under the cap by unmapping idle buffers, largest first.
        if live + slackBytes + pooledBytes > cap { evict(down: max(0, cap - live - slackBytes)) }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              p != MAP_FAILED else {
            // Out of address space or memory: give everything idle back and try once more.
            evict(down: 0)
            guard let q = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                  q != MAP_FAILED else { return nil }
            maps += 1
            return q
        }
        maps += 1
        return p
    }

    /// Returns a buffer from `take(bytes:...)` with the same `bytes`.
    func give(_ p: UnsafeMutableRawPointer, bytes: Int) {
        guard Self.enabled, bytes >= Self.minimumBytes else { free(p); return }
        var size = Self.mappedSize(bytes)
        if let lent = lentLarger.removeValue(forKey: p) {
            slackBytes -= lent - size
            size = lent
        }
        idle[size, default: []].append(p)
        pooledBytes += size
    }

    /// Unmaps idle buffers, largest first, until at most `target` bytes are pooled.
    func evict(down target: Int) {
        guard pooledBytes > target else { return }
        for size in idle.keys.sorted(by: >) {
            guard var list = idle[size] else { continue }
            while pooledBytes > target, let p = list.popLast() {
                munmap(p, size)
                pooledBytes -= size
                unmaps += 1
            }
            idle[size] = list.isEmpty ? nil : list
            if pooledBytes <= target { break }
        }
    }

    deinit { evict(down: 0) }
}
