// Bonsai-Net's relaxed, hyper-connected space and Bonsai on it: every cell has its own α and op
// states; a cell sums gated inputs from every earlier output; a pruned inter-cell input allocates
// nothing (and a removed one holds no parameters); the dry-run prediction equals the measured
// step; growth turns the old classifier into an auxiliary head whose weighted loss joins the
// loss; Bonsai sections on this space are predicted within 2 % and stay inside the budget;
// deadheading removes inter-cell inputs; the pruned network is exported and trains.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class BonsaiHyperTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))
    let strategy = "espalier.strategy.bonsai/1", gate = "espalier.gate.sawwave/1", compression = "espalier.regularizer.compression/1"

    /// A tiny hyper-connected space: C = 4, 2 nodes, three real ops (no `none`), 8×8 images.
    func config(cells: Int = 4, sections: String? = nil, epochs: Int = 1) -> SearchConfig {
        var c = SearchConfig()
        c.space.channels = 4; c.space.nodes = 2; c.space.multiplier = 2; c.space.stemMultiplier = 1
        c.space.ops = ["max_pool_3x3", "skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" }
        c.space.cells = cells
        c.space.hyperConnected = true
        c.batchSize = 4; c.epochs = epochs; c.seed = 3
        c.strategy = strategy; c.gate = gate; c.regularizers = [compression]
        c.strategySettings = ["section_cells": sections ?? String(cells), "margin": "0"]
        return c
    }

    func makeRun(_ c: SearchConfig, budget: Int? = nil, images: Int = 32) throws -> (SearchRun, MemoryAccountant, BonsaiLog, Dataset) {
        try makeBonsaiRun(c, registry: Self.registry, budget: budget, images: images)
    }

    func batch(_ ds: Dataset, _ acc: MemoryAccountant, n: Int = 4) throws -> Batch {
        try DataLoader(ds.all, batchSize: n, shuffle: false).next(accountant: acc)!
    }

    func testDistinctCells_EachHasItsOwnAlphaAndOpStates() throws {
        let (run, _, _, _) = try makeRun(config())
        let net = run.supernet
        XCTAssertEqual(net.slotCount, 4, "one α per cell")
        XCTAssertEqual(Set(net.alphas.map(\.name)).count, 4)
        // Every edge holds every candidate op.
        XCTAssertTrue(net.alphas.allSatisfy { $0.value.shape == [net.space.edgesPerCell, 3] })
        // A candidate masked in cell 1 stays active in every other cell, normal or reduction.
        try run.setOpState(slot: 1, edge: 0, op: 2, .masked)
        XCTAssertEqual(net.opState(slot: 1, edge: 0, op: 2), .masked)
        for s in [0, 2, 3] { XCTAssertEqual(net.opState(slot: s, edge: 0, op: 2), .active, "cell \(s)") }
        // α written into cell 2 changes no other cell.
        let before = net.alphas.map { $0.value.array }
        net.alphas[2].value[0] = 0.75
        for s in [0, 1, 3] { XCTAssertEqual(net.alphas[s].value.array, before[s]) }
        // And the architecture parameters the optimiser trains include every cell's α and inputs.
        XCTAssertEqual(net.archParameters.count, 4 + 4)
    }

    func testACell_SumsGatedInputsFromEveryEarlierCell() throws {
        let (run, acc, _, ds) = try makeRun(config())
        let net = run.supernet
        // Cell i's inputs: the stem and cells 0…i−2 (cell 0: the stem), plus the hard-wired previous cell.
        XCTAssertEqual(net.inputAlphas.map(\.count), [1, 1, 2, 3])
        for a in net.inputAlphas + net.alphas { for i in 0..<a.count { a.value[i] = 0.1 } }   // every pruner open
        let b = try batch(ds, acc)
        run.train(weights: false, arch: true)
        for p in net.archParameters { p.zeroGrad() }
        acc.resetPeak()
        let (loss, _) = try run.lossAndGradients(b.images, b.labels)
        XCTAssertTrue(loss.isFinite)
        // Each earlier output reaches cell 3 through its own gate: each input logit gets a gradient,
        // and each input's preprocessing held activations, owned under the cell.
        for j in 0..<3 {
            XCTAssertNotEqual(net.inputAlphas[3].grad![j], 0, "input \(j) of cell 3 is in the gated sum")
            XCTAssertGreaterThan(acc.peakBytes(ownerPrefix: "model/cell3/input\(j)").total
                                 + acc.currentBytes(ownerPrefix: "model/cell3/input\(j)").total, 0)
        }
        // The sum itself: closing one input changes the loss; closing it equals removing it.
        func evalLoss() throws -> Double { try run.graph.noGrad { try run.lossAndGradients(b.images, b.labels, backward: false).0 } }
        run.graph.training = false
        defer { run.graph.training = true }
        let open = try evalLoss()
        net.inputAlphas[3].value[1] = -0.1
        let closed = try evalLoss()
        XCTAssertNotEqual(open, closed, accuracy: 1e-7, "cell 0's output is one of cell 3's summed inputs")
        try run.setInputState(cell: 3, input: 1, .removed)
        XCTAssertEqual(try evalLoss(), closed, accuracy: 1e-6, "a pruned input contributes exactly nothing")
    }

    func testAPrunedInterCellInput_AllocatesNothing_AndTheDryRunStaysExact() throws {
        let c = config()
        let (run, acc, _, ds) = try makeRun(c)
        let net = run.supernet
        for a in net.inputAlphas + net.alphas { for i in 0..<a.count { a.value[i] = 0.1 } }
        net.inputAlphas[3].value[0] = -0.1   // the stem's input to cell 3: pruned by its saw-wave gate
        let params = acc.currentBytes(ownerPrefix: "model/cell3/input0").total
        XCTAssertGreaterThan(params, 0, "its preprocessing's parameters exist until it is removed")
        acc.resetPeak()
        let before = acc.currentBytes(ownerPrefix: "model/cell3/input0").total
        let b = try batch(ds, acc)
        run.train(weights: true, arch: true)
        _ = try run.lossAndGradients(b.images, b.labels)
        XCTAssertEqual(acc.peakBytes(ownerPrefix: "model/cell3/input0").total, before, "nothing allocated by the pruned input in a step")
        XCTAssertEqual(acc.currentBytes(ownerPrefix: "model/cell3/input0").total, before)
        XCTAssertGreaterThan(acc.peakBytes(ownerPrefix: "model/cell3/input1")[.activations], 0, "an open input keeps activations for backward")
        // Removed for good: its parameters go too.
        try run.setInputState(cell: 3, input: 0, .removed)
        XCTAssertEqual(acc.currentBytes(ownerPrefix: "model/cell3/input0").total, 0)
        XCTAssertFalse(net.weights.contains { $0.name.contains("cell3/input0/") })
        // predict_peak with the live states = the measured peak of the same step, byte for byte.
        var c2 = c
        c2.space = run.supernet.space
        let p = try SearchRun.predictStep(config: c2, registry: Self.registry, imageShape: (1, 8, 8), classes: 3)
        let (fresh, facc, _, fds) = try makeRun(c2)
        for a in fresh.supernet.inputAlphas + fresh.supernet.alphas { for i in 0..<a.count { a.value[i] = 0.1 } }   // a dry run runs every candidate
        try fresh.firstStep()
        XCTAssertEqual(p.stepPeak, facc.peakTotal - fds.byteCount, "dry run = measured (hyper-connected, every input open in both)")
        let withStates = try run.predictPeak(change: "{}")
        XCTAssertLessThan(withStates.stepPeak, p.stepPeak, "the removed input is left out of the live run's prediction")
    }

    func testGrowth_TheOldClassifierBecomesAnAuxiliaryHead_WhoseWeightedLossJoinsTheLoss() throws {
        var c = config(cells: 2, sections: "2,3")
        c.strategySettings["auxiliary_weight"] = "0.3"   // the strategy's parameter sets the space's weight
        let (run, acc, _, ds) = try makeRun(c)
        let classifier = run.supernet.weights.filter { $0.name.hasSuffix("/classifier/weight") }.first!.value.array
        try run.grow(cells: 3)
        let net = run.supernet
        XCTAssertEqual(net.space.auxiliaryWeight, 0.3)
        XCTAssertEqual(net.space.auxiliaryCells, [1], "an auxiliary head after the old last cell")
        XCTAssertEqual(net.slotCount, 3, "the new cell is distinct, with its own α")
        let aux = try XCTUnwrap(net.weights.first { $0.name.hasSuffix("/aux1/weight") })
        XCTAssertEqual(aux.value.array, classifier, "the old classifier's weights carried into the auxiliary head")
        // loss = CE(main) + w·CE(aux), by hand from the two heads' logits of the same forward.
        let b = try batch(ds, acc)
        run.train(weights: true, arch: false)
        let g = run.graph
        let main = try net.logits(g, g.constant(b.images))
        let auxLogits = try XCTUnwrap(net.lastAuxLogits.first, "the auxiliary head runs in training")
        func ce(_ v: Variable) -> Double {
            let k = v.shape[1]
            var sum = 0.0
            for (n, label) in b.labels.enumerated() {
                let row = (0..<k).map { Double(v.value[n * k + $0]) }
                let m = row.max()!
                sum += m + log(row.map { exp($0 - m) }.reduce(0, +)) - row[Int(label)]
            }
            return sum / Double(b.labels.count)
        }
        let (ceMain, ceAux) = (ce(main), ce(auxLogits))
        g.clearTape()
        let expected = ceMain + 0.3 * ceAux
        let (loss, _) = try run.lossAndGradients(b.images, b.labels)
        XCTAssertEqual(loss, expected, accuracy: 1e-4)
        XCTAssertNotEqual(ceAux, 0)
        XCTAssertNotNil(aux.grad, "the auxiliary head is trained")
        XCTAssertGreaterThan(try XCTUnwrap(aux.grad).array.map(abs).max()!, 0)
    }

    func testBonsaiSections_OnTheHyperConnectedSpace_PredictedWithin2Percent_InsideTheBudget() throws {
        let c = config(cells: 2, sections: "2,3,4", epochs: 4)
        var full = c; full.space.cells = 4; full.space.reductionCells = [1, 2]; full.strategySettings["section_cells"] = "4"
        let data = try Dataset.synthetic(count: 32, channels: 1, height: 8, width: 8, classes: 3, seed: 1, accountant: MemoryAccountant()).byteCount
        let budget = try SearchRun.predictStep(config: full.withStrategySpace(try Self.registry.require(strategy, kind: .strategy)), registry: Self.registry,
                                               imageShape: (1, 8, 8), classes: 3).stepPeak + data + (64 << 10)
        let (run, acc, log, _) = try makeRun(c, budget: budget)
        XCTAssertEqual(run.supernet.space.reductionCells, [1, 2], "reductions where the last section's depth has them")
        let watcher = BonsaiPeakWatcher(acc)
        try run.run(progress: watcher)
        XCTAssertEqual(run.supernet.space.cells, 4)
        XCTAssertEqual(run.supernet.slotCount, 4, "every grown cell distinct")
        XCTAssertEqual(run.supernet.space.auxiliaryCells, [1, 2], "each old classifier became an auxiliary head")
        XCTAssertLessThanOrEqual(watcher.worst, budget, "inside the budget at every step")
        assertSections(log, cells: ["2", "3", "4"], budget: budget)
        XCTAssertEqual(log.sections.last?["target"], "none", "the last section trains without the compression term")
        // Compression values per cell, inter-cell inputs included.
        XCTAssertNoThrow(try run.services.value("candidate_bytes/cell3"))
    }

    func testBonsai_DeadheadsInterCellInputs_AndExportsAPrunedNetworkThatTrains() throws {
        var c = config(cells: 3, sections: "3", epochs: 2)
        c.strategySettings["deadhead_window"] = "1"
        c.archWeightDecay = 0
        let (run, acc, log, ds) = try makeRun(c, budget: 1 << 30)
        /// After every step the stem's input to cell 2 is held pruned (as if its pruner had learnt w < 0).
        final class Pruner: SearchProgress {
            let run: SearchRun
            init(_ r: SearchRun) { run = r }
            func step(_ done: Int, of total: Int, loss: Double, accuracy: Double) {
                if let a = run.supernet.inputAlphas.last, try! run.supernet.inputState(cell: 2, input: 0) != .removed { a.value[0] = -0.2 }
            }
            func epochDone(_ log: SearchEpochLog) {}
        }
        try run.run(progress: Pruner(run))
        XCTAssertEqual(try run.supernet.inputState(cell: 2, input: 0), .removed, "\(log.lines)")
        XCTAssertTrue(log.lines.contains { $0.contains("deadheaded inter-cell input stem of cell 2") }, "\(log.lines)")
        XCTAssertEqual(acc.currentBytes(ownerPrefix: "model/cell2/input0").total, 0, "its preprocessing is freed")
        // The export: cell 2 keeps its other input; every cell lists its own surviving ops per edge.
        let arch = try run.prunedArchitecture()
        XCTAssertEqual(arch.inputs[2], [1])
        XCTAssertEqual(arch.ops.count, 3)
        XCTAssertTrue(arch.ops.allSatisfy { $0.count == c.space.edgesPerCell })
        let path = NSTemporaryDirectory() + "pruned-\(UUID().uuidString).json"
        try arch.save(path: path)
        XCTAssertEqual(try PrunedArchitecture.load(path: path), arch)
        // Built from scratch: nothing of the pruned parts, and it trains.
        let acc2 = MemoryAccountant()
        let net = try PrunedNetwork(arch, registry: Self.registry, context: HostContext(accountant: acc2, seed: 1), seed: 1)
        XCTAssertFalse(net.parameters.contains { $0.name.contains("cell2/input0/") })
        XCTAssertLessThan(net.parameterCount, run.supernet.weightCount + 1)
        var tc = TrainConfig(); tc.epochs = 1; tc.batchSize = 8
        let trainer = try ClassifierTrainer(model: net, accountant: acc2, config: tc)
        let b = try batch(ds, acc2, n: 8)
        let (l, _) = try trainer.trainStep(images: b.images, labels: b.labels)
        XCTAssertTrue(l.isFinite)
        // Saved and loaded back (as `espalier eval` does): the same evaluation-mode logits.
        let model = NSTemporaryDirectory() + "pruned-model-\(UUID().uuidString).safetensors"
        defer { try? FileManager.default.removeItem(atPath: model) }
        try net.save(path: model, extraMetadata: ["espalier.test_accuracy": "0.5"])
        let acc3 = MemoryAccountant()
        let (loaded, meta) = try loadClassifier(path: model, registry: Self.registry, context: HostContext(accountant: acc3, seed: 9))
        XCTAssertTrue(loaded is PrunedNetwork)
        XCTAssertEqual(meta["espalier.test_accuracy"], "0.5")
        func evalLogits(_ m: Classifier, _ a: MemoryAccountant) throws -> [Float] {
            let g = Graph(accountant: a)
            g.training = false
            return try g.noGrad { try m.logits(g, g.constant(try batch(ds, a, n: 8).images)).value.array }
        }
        XCTAssertEqual(try evalLogits(loaded, acc3), try evalLogits(net, acc2))
        // An architecture whose lists do not fit the space is refused with the reason.
        var bad = arch; bad.inputs[1] = [5]
        XCTAssertThrowsError(try PrunedNetwork(bad, registry: Self.registry, context: HostContext(accountant: MemoryAccountant(), seed: 1), seed: 1)) {
            XCTAssertTrue("\($0)".contains("cell 1 has inputs 0..<1"), "\($0)")
        }
    }

    func testCompressionPerCell_CountsTheInterCellInputsBytes_AsTheRegularizerDoes() throws {
        let (run, acc, _, _) = try makeRun(config())
        for a in run.supernet.inputAlphas + run.supernet.alphas { for i in 0..<a.count { a.value[i] = 0.1 } }
        run.supernet.inputAlphas[3].value[2] = -0.1   // cell 1's output into cell 3: pruned
        try run.firstStep()   // a forward: every input's shape is known
        try run.publishSectionValues()
        let costs = try run.slotCosts()
        XCTAssertEqual(costs.inputs.map(\.memory.count), [1, 1, 2, 3])
        XCTAssertTrue(costs.inputs.allSatisfy { $0.memory.allSatisfy { $0 > 0 } }, "every inter-cell input has the accountant's bytes")
        let ops = costs.slots[3].memory.reduce(0) { $0 + Double($1) }, inputs = costs.inputs[3].memory.map(Double.init)
        let all = ops + inputs.reduce(0, +), kept = ops + inputs[0] + inputs[1]
        XCTAssertEqual(try run.services.value("candidate_bytes/cell3"), all, accuracy: 1)
        XCTAssertEqual(try run.services.value("compression/cell3"), kept / all, accuracy: 1e-6)
        // The regularizer on the host's two targets of cell 3 (ops, inputs): one c for the cell. λ = 1, target 0 → its value is c.
        let r = try PluginRegularizer(try Self.registry.require(compression, kind: .regularizer), context: HostContext(accountant: acc),
                                      settings: ["target": "0", "lambda": "1"])
        let e = run.supernet.space.edgesPerCell
        let g1 = try Tensor.from(Array(repeating: 1, count: e * 3), shape: [e, 3], accountant: acc)
        let s1 = try Tensor.from(costs.slots[3].memory, shape: [e, 3], accountant: acc)
        let g2 = try Tensor.from([1, 1, 0], shape: [3, 1], accountant: acc)
        let s2 = try Tensor.from(costs.inputs[3].memory, shape: [3, 1], accountant: acc)
        let value = try r.loss([RegularizerTarget(kind: .gateWeights, name: "gate/cell3/memory", values: [g1], grads: [nil], costs: [s1]),
                                RegularizerTarget(kind: .gateWeights, name: "gate/cell3/inputs/memory", values: [g2], grads: [nil], costs: [s2])])
        XCTAssertEqual(value, kept / all, accuracy: 1e-5)
    }

    func testASpaceWrittenBeforeTheHyperConnectedFields_StillLoads() throws {
        var s = SearchSpaceDescription()
        s.cells = 7; s.reductionCells = [2, 4]
        var obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: JSONEncoder().encode(s)) as? [String: Any])
        for k in ["hyperConnected", "auxiliaryCells", "auxiliaryWeight"] { XCTAssertNotNil(obj.removeValue(forKey: k), k) }
        XCTAssertEqual(try JSONDecoder().decode(SearchSpaceDescription.self, from: JSONSerialization.data(withJSONObject: obj)), s)
        var h = s; h.hyperConnected = true; h.auxiliaryCells = [1]; h.auxiliaryWeight = 0.2
        XCTAssertEqual(try JSONDecoder().decode(SearchSpaceDescription.self, from: JSONEncoder().encode(h)), h, "and round-trips")
    }

    func testHyperConnected_RefusesPartialChannels_WithTheReason() throws {
        var c = config()
        c.space.partialChannels = 2
        XCTAssertThrowsError(try c.space.validate()) { XCTAssertTrue("\($0)".contains("hyper-connected") && "\($0)".contains("partial channels"), "\($0)") }
    }
}
