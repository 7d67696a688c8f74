// A forward without tape adds each candidate op's output into its node's sum (PluginOp.accumulate):
// where the op's first build on the input's shape ended in a batch norm, that batch norm adds into
// the sum as it normalises (the output is never stored); otherwise the output is made and added.
// Checked for every DARTS op, fused and unfused, at stride 1 and 2, affine or not: the sum and the
// running statistics bit for bit those of op(x) followed by axpy, never more memory, and a pool's
// batch norm storing no output.

import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class ForwardSinkTests: XCTestCase {
    func testAccumulate_IsBitForBitTheOutputAddedIn_AndStoresNoOutputWhereABatchNormEndsTheOp() throws {
        let ops = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
        for name in ops { for s in [1, 2] { for affine in [false, true] { for fuses in [true, false] {
            let what = "\(name) stride \(s)\(affine ? " affine" : "")\(fuses ? "" : " unfused")"
            let acc = MemoryAccountant()
            let op = try OpIRTests.op(name, channels: 8, stride: s, affine: affine, context: HostContext(accountant: acc, seed: 3))
            op.fuses = fuses
            let x = try randomTensor([3, 8, 10, 10], acc, seed: 5)
            let g = Graph(accountant: acc)
            g.training = true
            let start = op.buffers.map { $0.array }
            func reset() { for (b, v) in zip(op.buffers, start) { for i in 0..<v.count { b[i] = v[i] } } }
            // The reference: op(x), then sum += w·y. Twice: the first build makes the IR the second is checked against.
            var reference: Tensor? = nil, referencePeak = 0
            for _ in 0..<2 {
                reset()
                let sum = try randomTensor([3, 8, 10 / s, 10 / s], acc, seed: 7)
                acc.resetPeak()
                let before = acc.currentTotal
                try g.noGrad {
                    let y = try op(g, g.leaf(x))
                    Kernels.axpy(0.37, y.value.ptr, sum.ptr, count: sum.count)
                }
                referencePeak = acc.peakTotal - before
                reference = sum
            }
            let referenceStatistics = op.buffers.map { $0.array }
            reset()
            let sum = try randomTensor([3, 8, 10 / s, 10 / s], acc, seed: 7)
            acc.resetPeak()
            let before = acc.currentTotal
            try g.noGrad { try op.accumulate(g, g.leaf(x), into: sum, scale: 0.37) }
            let peak = acc.peakTotal - before
            XCTAssertEqual(sum.array.map(\.bitPattern), reference!.array.map(\.bitPattern), "\(what): the sum")
            XCTAssertEqual(op.buffers.map { $0.array }, referenceStatistics, "\(what): the running statistics")
            // Never more memory; for a pool and its batch norm (no affine map: the search's pools end in
            // one), whose peak is the pool's output and the batch norm's, one output's bytes less.
            XCTAssertLessThanOrEqual(peak, referencePeak, "\(what): peak \(peak) against \(referencePeak)")
            if name.hasSuffix("pool_3x3") && !affine {
                XCTAssertEqual(peak, referencePeak - sum.count * MemoryLayout<Float>.size, "\(what): the batch norm's output is not stored")
            }
        } } } }
    }

    /// An op that views its output (value_view) gets it stored: viewed in its first build, it never
    /// gets a sink; one that starts viewing it later is told why it cannot. (Viewing its input, as
    /// the DARTS ops do to check its shape, changes nothing: the first test's ops get the sink.)
    func testAccumulate_AnOpThatReadsItsOutput_GetsItStored_OrAClearError() throws {
        for from in [1, 2] {
            let dir = try PluginFixtures.tempDir("reader\(from)")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try PluginFixtures.build("libespalier-reader.so", in: dir, defines: ["FIX_READS_OUTPUT=\(from)"])
            let registry = PluginLoader(context: HostContext()).load(PluginSearchPath(directories: [dir]))
            let acc = MemoryAccountant()
            let op = try PluginOp(try registry.require("org.fixture.op.bn-reader/1", kind: .op), context: HostContext(accountant: acc),
                                  config: OpConfig(inChannels: 3, outChannels: 3), ownerPath: "e/reader")
            let g = Graph(accountant: acc)
            let x = try randomTensor([2, 3, 4, 4], acc, seed: 1)
            let sum = try Tensor.zeros([2, 3, 4, 4], category: .data, accountant: acc)
            try g.noGrad {
                let y = try op(g, g.leaf(x))   // the first build: its IR
                if from == 1 {
                    try op.accumulate(g, g.leaf(x), into: sum, scale: 2)
                    XCTAssertEqual(sum.array, y.value.array.map { 2 * $0 }, "the output stored and added")
                } else {
                    XCTAssertThrowsError(try op.accumulate(g, g.leaf(x), into: sum, scale: 2)) { e in
                        XCTAssertTrue("\(e)".contains("value_view of the op's last batch norm output"), "\(e)")
                    }
                }
            }
        }
    }

    /// A sink is for a forward without tape: the batch norm refuses it in a taped graph.
    func testSink_InATapedGraph_IsRefused() throws {
        let acc = MemoryAccountant()
        let g = Graph(accountant: acc)
        let x = g.leaf(try randomTensor([2, 8, 6, 6], acc, seed: 1))
        let sum = try randomTensor([2, 8, 6, 6], acc, seed: 2)
        XCTAssertThrowsError(try g.batchNorm(x, gamma: nil, beta: nil, runningMean: nil, runningVar: nil, sink: ForwardSink(target: sum, scale: 1))) { e in
            XCTAssertTrue("\(e)".contains("forward without tape"), "\(e)")
        }
    }
}
