// The worker pool behind Parallel's loops: every chunk runs exactly once per loop, loops nested
// in a chunk and loops from a second thread run inline, and thousands of back-to-back loops
// (a search step's pattern) neither lose nor repeat work. Loops whose chunks are disjoint are split
// finer than the threads, so a thread held up in one chunk leaves the others to the rest.

import EspalierCore
import Foundation
import XCTest

final class ParallelTests: XCTestCase {
    func testEveryChunkRunsOnce_OverManyBackToBackLoops() {
        let n = 1000
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: n)
        defer { counts.deallocate() }
        counts.update(repeating: 0, count: n)
        for loop in 0..<5000 {
            let items = 2 + loop % 7
            Parallel.forChunksIndexed(items, chunks: min(items, 2 + loop % 3)) { _, range in
                for i in range { counts[i] += 1 }
            }
        }
        var expected = [Int](repeating: 0, count: n)
        for loop in 0..<5000 { for i in 0..<(2 + loop % 7) { expected[i] += 1 } }
        XCTAssertEqual(Array(UnsafeBufferPointer(start: counts, count: n)), expected)
    }

    func testNestedLoop_RunsInline_WithTheRightResult() {
        let out = UnsafeMutablePointer<Int>.allocate(capacity: 64)
        defer { out.deallocate() }
        out.update(repeating: 0, count: 64)
        Parallel.forChunksIndexed(4, chunks: 2) { _, outer in
            for o in outer {
                Parallel.forChunks(16) { inner in for i in inner { out[o * 16 + i] += o * 100 + i } }
            }
        }
        XCTAssertEqual(Array(UnsafeBufferPointer(start: out, count: 64)), (0..<4).flatMap { o in (0..<16).map { o * 100 + $0 } })
    }

    func testLoopsFromTwoThreads_BothComplete() {
        let n = 200_000
        let a = UnsafeMutablePointer<Float>.allocate(capacity: n), b = UnsafeMutablePointer<Float>.allocate(capacity: n)
        defer { a.deallocate(); b.deallocate() }
        a.update(repeating: 0, count: n); b.update(repeating: 0, count: n)
        let group = DispatchGroup()
        for (target, value) in [(a, Float(1)), (b, Float(2))] {
            let address = Int(bitPattern: target)   // (a pointer is not Sendable; its address is)
            DispatchQueue.global().async(group: group) {
                let p = UnsafeMutablePointer<Float>(bitPattern: address)!
                for _ in 0..<200 { Parallel.forChunks(n, grain: 1000) { r in for i in r { p[i] += value } } }
            }
        }
        group.wait()
        XCTAssertTrue((0..<n).allSatisfy { a[$0] == 200 && b[$0] == 400 })
    }

    func testDisjointLoop_AThreadHeldUpInOneChunk_LeavesTheRestToTheOthers() {
        let n = 64
        guard Parallel.workers > 1 else { XCTAssertEqual(Parallel.disjointChunkCount(n), 1); return }
        XCTAssertEqual(Parallel.disjointChunkCount(n), min(n, Parallel.workers * Parallel.chunksPerWorker))
        XCTAssertEqual(Parallel.chunkCount(n), Parallel.workers, "loops that add chunks' partial sums keep one chunk per worker")
        let ranBy = UnsafeMutablePointer<pthread_t>.allocate(capacity: n)    // the thread that ran each item
        defer { ranBy.deallocate() }
        Parallel.forChunks(n) { range in
            if range.lowerBound == 0 { usleep(200_000) }     // the thread that took the first chunk is held up
            for i in range { ranBy[i] = pthread_self() }
        }
        let held = ranBy[0]
        let itemsOfHeld = (0..<n).filter { pthread_equal(ranBy[$0], held) != 0 }.count
        XCTAssertLessThan(itemsOfHeld, n / Parallel.workers,
                          "a thread held up in its first chunk should leave more than its even share to the others")
    }
}
