// Cost targets of channel masks come from the op IR, not from FiGS's names: a third party's
// channel-masked op (the fixture's masked-conv: 1×1 conv, BN, a mask of its own, names of its own)
// gets a parameter target for its convolution in a search with the FiGS cost regularizer, and its
// mask logits are kept out of the weight clip like FiGS's.

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
    }
}
