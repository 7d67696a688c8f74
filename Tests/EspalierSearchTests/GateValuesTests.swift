// `set_value("gate.NAME", v)` reaches every gate the supernet holds: in the hyper-connected space
// one per cell plus each cell's inter-cell input gate, not only the normal and reduce ones. The
// fixture's linear gate (weights = scale · logits, `scale` settable; built with FIX_GATE_INPUTS so
// it can gate inputs too) makes each gate's value readable from its evaluation weights.

import CEspalierSDK
import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class GateValuesTests: XCTestCase {
    func testSetGateValue_ReachesEveryCellsGateAndEveryInputGate_WhenHyperConnected() throws {
        let dir = try PluginFixtures.tempDir()
        try PluginFixtures.build("libespalier-fixture.so", in: dir, defines: ["FIX_GATE_INPUTS"])
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 3)
        let registry = PluginLoader(context: context).load(PluginSearchPath.standard(extraDirectories: [dir], environment: [:]))
        XCTAssertEqual(registry.failures.map(\.description), [])
        var c = SearchConfig()
        c.space.channels = 4; c.space.nodes = 2; c.space.multiplier = 2; c.space.stemMultiplier = 1
        c.space.ops = ["max_pool_3x3", "skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" }
        c.space.cells = 5
        c.space.hyperConnected = true
        c.gate = "org.fixture.gate.linear/1"   // scale 2 by default
        c.batchSize = 4; c.epochs = 1; c.seed = 3
        let ds = try Dataset.synthetic(count: 16, channels: 1, height: 8, width: 8, classes: 3, seed: 1, accountant: acc)
        let run = try SearchRun(config: c, registry: registry, context: context, train: ds.all, outDirectory: nil)
        let net = run.supernet
        XCTAssertEqual(net.slotCount, 5, "a gate per cell")
        for a in net.alphas + net.inputAlphas { for i in 0..<a.count { a.value[i] = 0.25 } }

        // A strategy sets the value through its search services, as a plugin calls set_value.
        let search = try XCTUnwrap(context.services.pointee.search).pointee
        XCTAssertEqual(search.set_value(context.services.pointee.host, "gate.scale", 3), ES_OK)

        for s in 0..<net.slotCount {
            let w = try net.mixingWeights(slot: s, accountant: acc).flatMap { $0 }
            XCTAssertEqual(w, Array(repeating: 0.75, count: net.space.edgesPerCell * 3), "cell \(s)'s gate has scale 3")
        }
        for i in 0..<c.space.cells {
            let w = try net.inputWeights(cell: i, accountant: acc)
            XCTAssertEqual(w, Array(repeating: 0.75, count: max(i, 1)), "cell \(i)'s input gate has scale 3")
        }
        XCTAssertEqual(try run.services.value("gate.scale"), 3)
    }
}
