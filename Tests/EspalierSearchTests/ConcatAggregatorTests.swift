// FiGS's concat aggregator (§3.3) in the host's space and networks: a node is
// BN(conv1×1(concat_t w_t·y_t)) over its running candidates instead of Σ_t w_t·y_t. Checked here:
// the node against a naive reference computed from the supernet's own weights (both the recorded
// and the forward-only path), α's and the blocks' gradients against finite differences, a masked
// candidate's block getting no gradient and a removed one's freed, the dry-run prediction equal to
// the measured step, the FiGS export (each op keeps ⌊Σπ_out⌋ outputs, the node's 1×1 conv reads
// their concatenation) trained by the discrete network, the block's parameter-cost target, and
// clear errors for combinations the aggregator does not support.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class ConcatAggregatorTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    func makeRun(_ c: SearchConfig, images: Int = 16) throws -> SearchRun {
        try syntheticSearchRun(c, registry: Self.registry, images: images)
    }

    func param(_ run: SearchRun, _ suffix: String) throws -> Parameter {
        try XCTUnwrap(run.supernet.weights.first { $0.name.hasSuffix(suffix) }, "no parameter …\(suffix)")
    }

    // MARK: Forward: the node is the 1×1 conv of the concatenated weighted candidates

    /// Naive NCHW helpers for the reference (stride 1, square kernels).
    func conv(_ x: [Float], _ n: Int, _ ci: Int, _ h: Int, _ w: Int, weight: [Float], co: Int, k: Int) -> [Float] {
        let p = k / 2
        var y = [Float](repeating: 0, count: n * co * h * w)
        for b in 0..<n { for o in 0..<co { for i in 0..<h { for j in 0..<w {
            var s: Float = 0
            for c in 0..<ci { for u in 0..<k { for v in 0..<k {
                let ii = i + u - p, jj = j + v - p
                guard ii >= 0, ii < h, jj >= 0, jj < w else { continue }
                s += weight[((o * ci + c) * k + u) * k + v] * x[((b * ci + c) * h + ii) * w + jj]
            } } }
            y[((b * co + o) * h + i) * w + j] = s
        } } } }
        return y
    }

    func testNode_IsTheOneByOneConvOfTheConcatenatedWeightedCandidates_OnBothPaths() throws {
        // One normal cell of one node: edges from s0 and s1, candidates none and skip_connect.
        var c = tinySearchConfig(ops: ["espalier.op.none/1", "espalier.op.skip_connect/1"])
        c.space.cells = 1; c.space.nodes = 1; c.space.multiplier = 1; c.space.reductionCells = []
        c.space.aggregator = .concat
        let run = try makeRun(c)
        let alpha = run.supernet.alphaNormal
        for (i, v) in [Float(0.3), -0.8, 1.1, 0.2].enumerated() { alpha.value[i] = v }   // (edges 2, ops 2)
        let w = (0..<2).map { e in 1 / (1 + exp(Float(alpha.value[e * 2] - alpha.value[e * 2 + 1]))) }   // softmax weight of skip
        let batch = try run.trainLoader.nextCycling(accountant: run.accountant)
        let n = batch.images.shape[0], h = 8, wd = 8, cc = 4
        let x = batch.images.array
        let s = 1 / Float(1 + 1e-5).squareRoot()   // batch norm in evaluation mode with fresh statistics
        // stem: conv 3×3 (1 → 4), affine BN; pre0, pre1: ReLU → conv 1×1 → BN (not affine).
        let gamma = try param(run, "stem/bn/weight").value.array, beta = try param(run, "stem/bn/bias").value.array
        var stem = conv(x, n, 1, h, wd, weight: try param(run, "stem/conv/weight").value.array, co: cc, k: 3)
        for i in stem.indices { let ch = (i / (h * wd)) % cc; stem[i] = stem[i] * s * gamma[ch] + beta[ch] }
        let relu = stem.map { max($0, 0) }
        let s0 = conv(relu, n, cc, h, wd, weight: try param(run, "cell0/pre0/conv/weight").value.array, co: cc, k: 1).map { $0 * s }
        let s1 = conv(relu, n, cc, h, wd, weight: try param(run, "cell0/pre1/conv/weight").value.array, co: cc, k: 1).map { $0 * s }
        // The node: BN(conv1×1(concat(w0·s0, w1·s1))) with the weight [W_0 W_1] (C, 2C).
        let w0 = try param(run, "cell0/node0/concat/edge0.skip_connect").value.array
        let w1 = try param(run, "cell0/node0/concat/edge1.skip_connect").value.array
        var joined = [Float](repeating: 0, count: n * 2 * cc * h * wd), full = [Float](repeating: 0, count: cc * 2 * cc)
        for b in 0..<n { for ch in 0..<cc { for p in 0..<(h * wd) {
            joined[(b * 2 * cc + ch) * h * wd + p] = w[0] * s0[(b * cc + ch) * h * wd + p]
            joined[(b * 2 * cc + cc + ch) * h * wd + p] = w[1] * s1[(b * cc + ch) * h * wd + p]
        } } }
        for o in 0..<cc { for i in 0..<cc { full[o * 2 * cc + i] = w0[o * cc + i]; full[o * 2 * cc + cc + i] = w1[o * cc + i] } }
        let node = conv(joined, n, 2 * cc, h, wd, weight: full, co: cc, k: 1).map { $0 * s }
        // Classifier on the global average (the cell's output is its one node).
        let fcW = try param(run, "classifier/weight").value.array, fcB = try param(run, "classifier/bias").value.array
        var expected: [Float] = []
        for b in 0..<n {
            let pooled = (0..<cc).map { ch in (0..<(h * wd)).reduce(Float(0)) { $0 + node[(b * cc + ch) * h * wd + $1] } / Float(h * wd) }
            for k in 0..<3 { expected.append(fcB[k] + (0..<cc).reduce(Float(0)) { $0 + fcW[k * cc + $1] * pooled[$1] }) }
        }
        let g = Graph(accountant: run.accountant)
        g.training = false
        let streamed = try g.noGrad { try run.supernet.logits(g, g.constant(batch.images)).value.array }
        let recorded = try run.supernet.logits(g, g.constant(batch.images)).value.array
        g.clearTape()
        for (path, got) in [("forward only", streamed), ("recorded", recorded)] {
            XCTAssertEqual(got.count, expected.count)
            for i in expected.indices { XCTAssertEqual(got[i], expected[i], accuracy: 1e-4 * max(1, abs(expected[i])), "\(path) logit \(i)") }
        }
    }

    // MARK: Gradients

    func concatConfig() -> SearchConfig {
        var c = tinySearchConfig(ops: ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" })
        c.space.aggregator = .concat
        return c
    }

    /// L(batch) in training mode without gradients.
    func loss(_ run: SearchRun, _ b: Batch) throws -> Double {
        run.train(weights: false, arch: false)
        return try run.graph.noGrad { try run.lossAndGradients(b.images, b.labels, backward: false).0 }
    }

    func testAlphaAndBlockGradients_MatchFiniteDifferences() throws {
        let run = try makeRun(concatConfig())
        let valid = try run.validLoader.nextCycling(accountant: run.accountant)
        try run.archGradientFirstOrder(valid: valid)
        let alpha = run.supernet.alphaNormal
        let analytic = alpha.grad!.array
        XCTAssertGreaterThan(analytic.map(abs).max()!, 1e-5, "α gets a gradient through the concat node")
        try assertGradientMatchesFiniteDifferences(alpha, analytic, indices: Array(stride(from: 1, to: alpha.count, by: 3)), eps: 2e-3) { try loss(run, valid) }
        // The blocks of node 1's 1×1 conv (sep_conv on edge 2, skip on edge 4) and node 0's batch norm input.
        run.train(weights: true, arch: false)
        for p in run.supernet.weights { p.grad?.fill(0) }
        try run.lossAndGradients(valid.images, valid.labels)
        for suffix in ["cell0/node1/concat/edge2.sep_conv_3x3", "cell0/node1/concat/edge4.skip_connect", "cell1/node0/concat/edge0.max_pool_3x3"] {
            let p = try param(run, suffix)
            let grads = try XCTUnwrap(p.grad).array
            XCTAssertGreaterThan(grads.map(abs).max()!, 1e-6, "\(suffix) gets a gradient")
            try assertGradientMatchesFiniteDifferences(p, grads, indices: [0, 5, 10, 15], eps: 1e-3) { try loss(run, valid) }
        }
    }

    func testMaskedCandidate_BlockGetsNoGradient_RemovedCandidate_FreesItsBlock() throws {
        let run = try makeRun(concatConfig())
        let skip = 2, sep = 3
        try run.supernet.setOpState(reduction: false, edge: 0, op: skip, .masked)
        let masked = try param(run, "cell0/node0/concat/edge0.skip_connect")
        let kept = try param(run, "cell0/node0/concat/edge0.sep_conv_3x3")
        run.train(weights: true, arch: false)
        for p in run.supernet.weights { p.grad?.fill(0) }
        let b = try run.trainLoader.nextCycling(accountant: run.accountant)
        try run.lossAndGradients(b.images, b.labels)
        XCTAssertEqual(masked.grad.map { $0.array.map(abs).max()! } ?? 0, 0, "a masked candidate's block is not in the graph")
        XCTAssertGreaterThan(try XCTUnwrap(kept.grad).array.map(abs).max()!, 0)
        let before = run.accountant.current[.parameters], count = run.supernet.weightCount
        try run.supernet.setOpState(reduction: false, edge: 0, op: sep, .removed)
        XCTAssertFalse(run.supernet.weights.contains { $0.name.hasSuffix("cell0/node0/concat/edge0.sep_conv_3x3") }, "removed: its block is gone")
        let sepParams = 4 * 9 + 4 * 4 + 4 * 9 + 4 * 4   // two (dw 3×3, pw 1×1) at C = 4, BN not affine
        XCTAssertEqual(count - run.supernet.weightCount, sepParams + 4 * 4, "the op's weights and its 4×4 block")
        XCTAssertLessThan(run.accountant.current[.parameters], before, "their bytes are freed")
    }

    func testDryRunPrediction_EqualsTheMeasuredFirstStep() throws {
        var c = concatConfig()
        c.space.ops = SearchSpaceDescription.dartsOps
        let predicted = try SearchRun.predictStep(config: c, registry: Self.registry, imageShape: (1, 8, 8), classes: 3)
        let acc = MemoryAccountant()
        let ds = try acc.withOwner("dataset") { try Dataset.synthetic(count: 2 * c.batchSize, channels: 1, height: 8, width: 8, classes: 3, seed: 1, accountant: acc) }
        let run = try SearchRun(config: c, registry: Self.registry, context: HostContext(accountant: acc, seed: c.seed), train: ds.all, outDirectory: nil)
        try run.firstStep()
        XCTAssertEqual(predicted.stepPeak, run.accountant.peakTotal - ds.byteCount)
        XCTAssertGreaterThan(run.accountant.peakBytes(ownerPrefix: "model/cell0/node1/concat")[MemoryCategory.activations], 0, "the concat nodes' activations are owned by cellI/nodeN/concat")
    }

    // MARK: FiGS with the concat aggregator

    /// FiGS (no α): every edge sums nothing — its node concatenates skip_connect and the two FiGS convs.
    func figsConfig() -> SearchConfig {
        var c = tinySearchConfig(strategy: "espalier.strategy.figs/1", settings: ["aggregator": "concat"],
                                 ops: ["espalier.op.skip_connect/1", "espalier.op.figs_sep_conv_3x3/1", "espalier.op.figs_dil_conv_3x3/1"])
        c.channelGate = "espalier.gate.figs/1"
        c.channelGateSettings = ["tau": "0.001"]
        c.regularizers = ["espalier.regularizer.figs-cost/1"]
        c.regularizerSettings = ["espalier.regularizer.figs-cost/1": ["lambda": "0.001", "cost": "params"]]
        return c
    }

    func set(_ p: Parameter, on: Int) {
        for i in 0..<p.count { p.value[i] = i < on ? 40 : -40 }
    }

    func testFigsExport_OpsKeepTheirOutputMasksWidths_NodeConvReadsTheirConcat_AndTrains() throws {
        let run = try makeRun(figsConfig())
        XCTAssertEqual(run.supernet.space.aggregator, .concat, "the FiGS strategy's aggregator parameter reaches the space")
        try run.step(train: try run.trainLoader.nextCycling(accountant: run.accountant), valid: nil)
        // Cell 0 (C = 4), node 0 (edges 0, 1): edge 0's sep conv keeps 3 outputs, 2 intermediate; its dil conv 1
        // output; edge 1's dil conv none (dropped). Cell 1 (C = 8): edge 0's dil conv keeps 5 outputs.
        set(try param(run, "cell0/edge0/figs_sep_conv_3x3/mask_mid.logits"), on: 2)
        set(try param(run, "cell0/edge0/figs_sep_conv_3x3/mask_out.logits"), on: 3)
        set(try param(run, "cell0/edge0/figs_dil_conv_3x3/mask_out.logits"), on: 1)
        set(try param(run, "cell0/edge1/figs_dil_conv_3x3/mask_out.logits"), on: 0)
        set(try param(run, "cell0/edge1/figs_sep_conv_3x3/mask_out.logits"), on: 4)
        set(try param(run, "cell1/edge0/figs_dil_conv_3x3/mask_out.logits"), on: 5)
        // The block's parameter target: C_node weights per kept output channel.
        let target = try XCTUnwrap(try run.channelMaskTargets().first { $0.name == "channels/model/cell0/edge0/figs_sep_conv_3x3/concat/params" })
        XCTAssertEqual(target.costs?.first?.array, [Float](repeating: 4, count: 4))
        let g = try run.derive()
        XCTAssertEqual(g.aggregator, .concat)
        XCTAssertEqual(g, try Genotype.decode(Data(g.jsonText().utf8), file: "export"), "survives its JSON")
        let cells = try XCTUnwrap(g.perCell)
        let widths = try XCTUnwrap(cells[0].outChannels)
        // Node 0 of cell 0, in edge order: skip (4), sep (3), dil (1) from input 0; skip (4), sep (4) from input 1.
        let node0 = Array(zip(cells[0].edges, widths).prefix(cells[0].nodeSizes[0]))
        XCTAssertEqual(node0.map(\.0), [.init("skip_connect", 0), .init("figs_sep_conv_3x3", 0), .init("figs_dil_conv_3x3", 0),
                                        .init("skip_connect", 1), .init("figs_sep_conv_3x3", 1)])
        XCTAssertEqual(node0.map(\.1), [4, 3, 1, 4, 4])
        XCTAssertEqual(zip(cells[1].edges, try XCTUnwrap(cells[1].outChannels)).first { $0.0 == .init("figs_dil_conv_3x3", 0) }?.1, 5)
        // The discrete network: the ops' output layers and each node's 1×1 conv have those widths.
        let (net, _, acc, _) = try tinyDiscreteNetwork(g, registry: Self.registry)
        func shape(_ suffix: String) -> [Int]? { net.parameters.first { $0.name.hasSuffix(suffix) }?.shape }
        XCTAssertEqual(shape("cell0/node0/figs_sep_conv_3x31/pw2.weight"), [3, 2, 1, 1], "⌊Σπ_out⌋ = 3 outputs from ⌊Σπ_mid⌋ = 2")
        XCTAssertEqual(shape("cell0/node0/figs_dil_conv_3x32/pw.weight"), [1, 4, 1, 1])
        XCTAssertEqual(shape("cell0/node0/concat/conv/weight"), [4, 4 + 3 + 1 + 4 + 4, 1, 1], "the node's conv reads the concat of its ops")
        XCTAssertEqual(shape("cell0/node0/concat/bn/weight"), [4])
        var tc = TrainConfig()
        tc.batchSize = 4
        let trainer = try ClassifierTrainer(model: net, accountant: acc, config: tc)
        let batch = try run.trainLoader.nextCycling(accountant: run.accountant)
        let convW = net.parameters.first { $0.name.hasSuffix("cell0/node0/concat/conv/weight") }!
        let before = convW.value.array
        let (l, _) = try trainer.trainStep(images: batch.images, labels: batch.labels)
        XCTAssertTrue(l.isFinite)
        XCTAssertNotEqual(convW.value.array, before, "a step moves the node's conv")
    }

    func testFlopsAndMemoryTargets_AddTheBlockOfTheNodesConv() throws {
        var c = figsConfig()
        c.regularizerSettings = ["espalier.regularizer.figs-cost/1": ["lambda": "1e-6", "cost": "flops"]]
        let run = try makeRun(c)
        try run.step(train: try run.trainLoader.nextCycling(accountant: run.accountant), valid: nil)
        let dil = "cell0/edge2/figs_dil_conv_3x3"   // edge 2 reads node 0: input (4, 4, 8, 8), stride 1
        for on in [4, 2] {
            set(try param(run, dil + "/mask_out.logits"), on: on)
            let targets = try run.channelMaskTargets().filter { $0.name.contains(dil + "/") }
            func expected(_ kind: String) -> Double { targets.filter { $0.name.hasSuffix("/" + kind) }.reduce(0.0) { $0 + expectedCost($1) } }
            let op = try exportedOpFigure("espalier.op.figs_dil_conv_3x3/1", c: 4, mid: nil, input: [4, 4, 8, 8], registry: Self.registry)
            // Per kept output channel, the block of node 1's 1×1 conv (4 outputs): 2·N·4·H·W FLOPs, 4 weights × 12 bytes.
            let k = Double(on)
            XCTAssertEqual(expected("flops"), op.flops * k / 4 + k * 2 * 4 * 4 * 64, accuracy: 1e-3, "\(on) outputs kept")
            XCTAssertEqual(expected("memory"), op.bytes * k / 4 + k * 4 * 12, accuracy: 1e-3)
            XCTAssertEqual(expected("params"), k * 4 + k * 4, accuracy: 1e-3, "pw (C_in = 4 per output) and the block (C_node = 4 per output)")
        }
    }

    /// Π_parts Σ_i c_i·σ(ν_i) of one target.
    func expectedCost(_ t: RegularizerTarget) -> Double {
        zip(t.values, t.costs!).reduce(1.0) { product, vc in
            product * (0..<vc.0.count).reduce(0.0) { $0 + Double(vc.1[$1]) / (1 + exp(-Double(vc.0[$1]))) }
        }
    }

    // MARK: Errors and old files

    func testUnsupportedCombinations_AreClearErrors_OldGenotypesSum() throws {
        var c = concatConfig()
        c.space.partialChannels = 2
        XCTAssertThrowsError(try makeRun(c)) { XCTAssertTrue("\($0)".contains("concat aggregator") && "\($0)".contains("K=2"), "\($0)") }
        c = figsConfig()
        c.strategySettings = ["aggregator": "stack"]
        XCTAssertThrowsError(try makeRun(c)) { XCTAssertTrue("\($0)".contains("aggregator must be one of sum, concat"), "\($0)") }
        // Widths other than C in a summed genotype; an unknown aggregator.
        let cell = #"{"reduction": false, "channels": 4, "edges": [["sep_conv_3x3", 0], ["skip_connect", 1]], "node_sizes": [2], "concat": [2], "op_settings": [{}, {}], "out_channels": [3, 4]}"#
        let base = #"{"normal": [["sep_conv_3x3", 0], ["skip_connect", 1]], "normal_concat": [2], "reduce": [["sep_conv_3x3", 0], ["skip_connect", 1]], "reduce_concat": [2]"#
        XCTAssertThrowsError(try Genotype.decode(Data((base + #", "per_cell": ["# + cell + "]}").utf8), file: "g.json")) {
            XCTAssertTrue("\($0)".contains("node_aggregator") && "\($0)".contains("out_channels"), "\($0)")
        }
        XCTAssertNoThrow(try Genotype.decode(Data((base + #", "node_aggregator": "concat", "per_cell": ["# + cell + "]}").utf8), file: "g.json"))
        XCTAssertThrowsError(try Genotype.decode(Data((base + #", "node_aggregator": "stack"}"#).utf8), file: "g.json"))
        let old = try Genotype.decode(Data((base + "}").utf8), file: "old.json")
        XCTAssertNil(old.aggregator)
        XCTAssertEqual(old.nodeAggregator, .sum)
        XCTAssertFalse(old.jsonText().contains("node_aggregator"))
    }
}
