// Cost targets and the export of channel masks come from the op IR, not from FiGS's names: a third
// party's channel-masked op written from SDK/ alone (the fixture's masked-conv: 1×1 conv C → M, BN,
// a `channel_mask` of its own inside the op, ReLU, 1×1 conv M → C; names of its own) gets parameter
// targets for both convolutions and FLOPs and memory targets for its mask in a search with the
// FiGS cost regularizer, its mask logits are kept out of the weight clip like FiGS's, and the
// export records the mask's kept width, at which the discrete network builds the op.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import Foundation
import XCTest

final class ChannelMaskTargetsTests: XCTestCase {
    func testAThirdPartyMaskedOp_GetsAParameterTargetFromItsIR() throws {
        let dir = try PluginFixtures.tempDir("masked-conv")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try PluginFixtures.build("libespalier-masked.so", in: dir, defines: ["FIX_MASKED_CONV"])
        let registry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(extraDirectories: [dir], environment: [:]))
        var c = tinySearchConfig(ops: ["espalier.op.skip_connect/1", "org.fixture.op.masked-conv/1"], epochs: 1)
        c.strategy = "espalier.strategy.figs/1"
        c.channelGate = "espalier.gate.figs/1"
        c.channelGateSettings = ["tau": "0.001"]
        c.regularizers = ["espalier.regularizer.figs-cost/1"]
        c.regularizerSettings = ["espalier.regularizer.figs-cost/1": ["lambda": "0.001", "cost": "params"]]
        let run = try syntheticSearchRun(c, registry: registry)
        try run.step(train: try run.trainLoader.nextCycling(accountant: run.accountant), valid: nil)
        let targets = try run.channelMaskTargets()
        let mine = targets.filter { $0.name.hasSuffix("/masked-conv/proj/params") }
        XCTAssertFalse(mine.isEmpty, "\(targets.map(\.name))")
        let logits = run.supernet.weights.filter { $0.name.hasSuffix("masked-conv/keep.logits") }
        XCTAssertEqual(mine.count, logits.count, "one target per masked op")
        for t in mine {
            XCTAssertEqual(t.values.count, 1)
            let channels = t.values[0].shape[0]
            XCTAssertEqual(t.costs?[0].array, [Float](repeating: Float(channels), count: channels), "C_in weights per kept output channel (C_in = C_out = C here)")
            XCTAssertTrue(logits.contains { $0.value.storage === t.values[0].storage }, "the op's own mask logits")
        }
        XCTAssertTrue(run.clippedWeights.allSatisfy { !$0.name.hasSuffix("keep.logits") }, "mask logits are not clipped with the weights")
        let after = targets.filter { $0.name.hasSuffix("/masked-conv/out/params") }
        XCTAssertEqual(after.count, logits.count, "the conv after the mask has a target too")
        XCTAssertEqual(after.first?.costs?[0].array.first, Float(after.first?.values[0].shape[0] ?? 0), "C_out weights per kept input channel")

        // FLOPs and memory: the exported op's cost line in M, priced through channel_width (no output mask: parts [ν]).
        for kind in ["flops", "memory"] {
            let priced = targets.filter { $0.name.hasSuffix("/masked-conv/keep/\(kind)") }
            XCTAssertEqual(priced.count, logits.count, kind)
            for t in priced {
                XCTAssertEqual(t.values.count, 1)
                let b = try XCTUnwrap(t.costs?[0].array.first)
                XCTAssertGreaterThan(b, 0, "\(kind): one channel of M costs something")
                XCTAssertTrue(t.costs![0].array.allSatisfy { $0 == b })
            }
        }
        // The FLOPs per channel equal the difference of the op built at M and M − 1 (two 1×1 convs, BN, ReLU).
        let cell0 = try XCTUnwrap(targets.first { $0.name.contains("cell0/") && $0.name.hasSuffix("/masked-conv/keep/flops") })
        let input = [4, 4, 8, 8]   // the tiny config's batch 4, C = 4, 8×8; edge 0 of cell 0 has stride 1
        func flops(_ m: Int) throws -> Int {
            let op = try PluginOp(try registry.require("org.fixture.op.masked-conv/1", kind: .op), context: HostContext(accountant: MemoryAccountant(mode: .dryRun)),
                                  config: OpConfig(inChannels: 4, outChannels: 4, affine: true), ownerPath: "ref", exportedWidths: ["keep.logits": m])
            return try dryForwardFlops(op, input)
        }
        XCTAssertEqual(Double(cell0.costs![0].array[0]), Double(try flops(4) - flops(3)), accuracy: 1e-3)

        // Export: the mask's ⌊Σσ(ν)⌋ channels as the width the discrete network builds the op at.
        let keep = try XCTUnwrap(run.supernet.weights.first { $0.name.contains("cell0/edge0/") && $0.name.hasSuffix("masked-conv/keep.logits") })
        for i in 0..<keep.count { keep.value[i] = i < 3 ? 40 : -40 }
        let exported = try run.channelMaskExport().first { $0.path.contains("cell0/edge0/") }
        XCTAssertEqual(exported?.channels, ["keep.logits": 3])
        XCTAssertEqual(exported?.widths, ["keep.logits": 3])
        let g = try run.derive()
        let widths = try XCTUnwrap(g.perCell?[0].channelWidths)
        XCTAssertTrue(widths.contains(["keep.logits": 3]), "\(widths)")
        XCTAssertEqual(g, try Genotype.decode(Data(g.jsonText().utf8), file: "export"), "channel_widths survive the JSON")
        let (net, _, _, _) = try tinyDiscreteNetwork(g, registry: registry)
        let proj = net.parameters.filter { $0.name.hasSuffix("proj.weight") }.map(\.shape)
        XCTAssertTrue(proj.contains([3, 4, 1, 1]), "the exported op keeps 3 channels: \(proj)")
        XCTAssertTrue(net.parameters.contains { $0.name.hasSuffix("out.weight") && $0.shape == [4, 3, 1, 1] })
        XCTAssertFalse(net.parameters.contains { $0.name.hasSuffix("keep.logits") }, "no mask in the exported network")
    }
}

/// Forward FLOPs of `op` on an input of `shape`, in a dry graph.
func dryForwardFlops(_ op: PluginOp, _ shape: [Int]) throws -> Int {
    let dry = MemoryAccountant(mode: .dryRun)
    let g = Graph(accountant: dry)
    let x = try g.leaf(Tensor(shape: shape, category: .activations, accountant: dry))
    _ = try op(g, x)
    return g.flops
}
