// `Graph.opProfile` (espalier bench --profile): each recorded op is named by the Graph method that
// records it, counted, and timed forward (from the previous op's record, within a pass) and
// backward (its own closure); between passes nothing is timed, and without a profile nothing is kept.

import EspalierCore
import EspalierTestSupport
import XCTest

final class OpProfileTests: XCTestCase {
    /// A profiled graph, a leaf x of `shape`, and a forward pass begun.
    func profiledPass(_ shape: [Int], seed: UInt64) throws -> (MemoryAccountant, Graph, OpProfile, Variable) {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let profile = OpProfile()
        graph.opProfile = profile
        let x = graph.leaf(try randomTensor(shape, acc, seed: seed))
        profile.beginForward()
        return (acc, graph, profile, x)
    }

    func testProfile_NamesCountsAndTimesEachOp_ForwardAndBackward() throws {
        let (acc, graph, profile, x) = try profiledPass([2, 3, 9, 9], seed: 1)
        let a = try graph.maxPool2d(x, kernel: 3, stride: 1, padding: 1)
        let b = try graph.avgPool2d(a, kernel: 3, stride: 2, padding: 1)
        try graph.backward(b, gradient: try Tensor.filled(b.shape, value: 1, category: .data, accountant: acc))
        XCTAssertEqual(Set(profile.entries.keys), ["maxPool2d", "avgPool2d"], "named by the recording method, parameters dropped")
        for op in ["maxPool2d", "avgPool2d"] {
            let e = try XCTUnwrap(profile.entries[op])
            XCTAssertEqual(e.calls, 1, op)
            XCTAssertEqual(e.backwardCalls, 1, op)
            XCTAssertGreaterThan(e.forwardNanoseconds, 0, "\(op) ran inside a pass: its forward is timed")
            XCTAssertGreaterThan(e.backwardNanoseconds, 0, "\(op)'s backward is timed")
        }
        XCTAssertNotNil(graph.gradient(of: x), "the timed backward closures still hand the gradient on")

        // The backward ended the pass: an op recorded before the next beginForward is counted, not timed.
        let before = try XCTUnwrap(profile.entries["maxPool2d"])
        _ = try graph.maxPool2d(x, kernel: 3, stride: 1, padding: 1)
        let after = try XCTUnwrap(profile.entries["maxPool2d"])
        XCTAssertEqual(after.calls, 2)
        XCTAssertEqual(after.forwardNanoseconds, before.forwardNanoseconds, "time between passes is in no op")
        graph.clearTape()

        // An op that records nothing (no tape, or no gradient to hand on) still counts as itself.
        profile.beginForward()
        _ = try graph.zeros([2, 3, 9, 9])
        _ = try graph.noGrad { try graph.avgPool2d(x, kernel: 3, stride: 1, padding: 1) }
        XCTAssertEqual(profile.entries["zeros"]?.calls, 1)
        XCTAssertEqual(profile.entries["avgPool2d"]?.calls, 2)
        graph.clearTape()

        // Without a profile nothing is kept.
        graph.opProfile = nil
        profile.beginForward()
        _ = try graph.avgPool2d(x, kernel: 3, stride: 1, padding: 1)
        XCTAssertEqual(profile.entries["avgPool2d"]?.calls, 2)
        profile.reset()
        XCTAssertTrue(profile.entries.isEmpty)
    }

    func testProfile_ForwardTimeIsTheClockBetweenRecords() throws {
        let (_, graph, profile, x) = try profiledPass([1, 1, 4, 4], seed: 2)
        _ = try graph.maxPool2d(x, kernel: 3, stride: 1, padding: 1)
        usleep(20_000)   // work between two ops counts to the second
        _ = try graph.avgPool2d(x, kernel: 3, stride: 1, padding: 1)
        graph.clearTape()
        let avg = try XCTUnwrap(profile.entries["avgPool2d"]), max = try XCTUnwrap(profile.entries["maxPool2d"])
        XCTAssertGreaterThanOrEqual(avg.forwardNanoseconds, 20_000_000)
        XCTAssertLessThan(max.forwardNanoseconds, 20_000_000)
        XCTAssertEqual(avg.backwardCalls, 0, "no backward ran")
    }
}
