// PC-DARTS's channel shuffle, channel by channel, on the path the PC-DARTS supernet runs (edge
// ops on the first C/K channels, the rest bypassing them, mixed and shuffled into the node by
// Graph.partialNode / Kernels.partialMixSum, weighted by β̃): a one-cell, one-node supernet whose every
// channel carries its own constant, read out through an identity classifier, must give
//   node[i·K + g] = Σ_e β̃_e · (g = 0 ? op(x_e)[i] : bypass(x_e)[g·C/K + i]),   i < C/K,
// the DARTS/PC-DARTS definition (shuffle(concat(head, bypass), K)); any other permutation fails.
// A normal cell (skip_connect: the op is the identity) and a reduction cell (max_pool_3x3 + BN at
// stride 2; the bypass a 2×2 max-pool).

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class PCDartsChannelTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    func parameter(_ run: SearchRun, _ parts: [String]) throws -> Parameter {
        let found = run.supernet.weights.filter { p in parts.allSatisfy { p.name.contains($0) } }
        XCTAssertEqual(found.count, 1, "one parameter named with \(parts): \(found.map(\.name)) of \(run.supernet.weights.map(\.name))")
        return try XCTUnwrap(found.first)
    }

    /// Builds the supernet, sets every channel's constant and returns (logits of evaluation mode, expected).
    func shuffledNode(reduction: Bool, op: String, k: Int) throws -> (got: [Float], expected: [Float]) {
        var c = SearchConfig()
        c.space.channels = 8
        c.space.cells = 1
        c.space.nodes = 1
        c.space.multiplier = 1
        c.space.stemMultiplier = 1
        c.space.reductionCells = reduction ? [0] : []
        c.space.ops = ["espalier.op.\(op)/1"]
        c.strategy = "espalier.strategy.pcdarts/1"
        c.strategySettings = ["partial_channels": "\(k)"]   // edge normalisation on (the default)
        c.batchSize = 2
        c.seed = 4
        let cStem = 8, cCell = reduction ? 16 : 8
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        let acc = MemoryAccountant()
        let ds = try Dataset.synthetic(count: 8, channels: 1, height: 8, width: 8, classes: cCell, seed: 1, accountant: acc)
        let run = try SearchRun(config: c, registry: Self.registry, context: HostContext(accountant: acc, seed: c.seed), train: ds.all, outDirectory: nil)
        XCTAssertEqual(run.supernet.space.partialChannels, k)
        XCTAssertNotNil(run.supernet.betaNormal, "PC-DARTS's edge normalisation")

        // The stem's output: channel i is the constant s_i = 1 + 0.1·i (γ = 0, β = s; evaluation-mode BN).
        let s = (0..<cStem).map { 1 + 0.1 * Float($0) }
        try parameter(run, ["stem", "bn", "weight"]).value.fill(0)
        let stemBeta = try parameter(run, ["stem", "bn", "bias"])
        for i in 0..<cStem { stemBeta.value[i] = s[i] }
        // pre0 and pre1 (1×1 convs, cCell × cStem) give each cell channel its own value.
        let pre0 = try parameter(run, ["cell0", "pre0", "weight"]), pre1 = try parameter(run, ["cell0", "pre1", "weight"])
        XCTAssertEqual(pre0.shape, [cCell, cStem, 1, 1])
        pre0.value.fill(0); pre1.value.fill(0)
        for j in 0..<cCell {
            pre0.value[j * cStem + j % cStem] = 1 + Float(j / cStem)
            pre1.value[j * cStem + (cStem - 1 - j % cStem)] = 10 * (1 + Float(j / cStem))
        }
        // The classifier reads the node's channels one by one (global average pool of constants).
        let w = try parameter(run, ["classifier", "weight"]), b = try parameter(run, ["classifier", "bias"])
        XCTAssertEqual(w.shape, [cCell, cCell])
        w.value.fill(0); b.value.fill(0)
        for j in 0..<cCell { w.value[j * cCell + j] = 1 }
        // β̃ of the node's two edges: unequal, so that each edge's part is seen.
        let beta = reduction ? try XCTUnwrap(run.supernet.betaReduce) : try XCTUnwrap(run.supernet.betaNormal)
        beta.value[0] = 0.3; beta.value[1] = -0.2
        let edgeWeights = try XCTUnwrap(try run.supernet.edgeWeights(reduction: reduction, accountant: acc))

        let batch = try run.trainLoader.nextCycling(accountant: acc)
        run.graph.training = false
        defer { run.graph.training = true }
        let logits = try run.supernet.logits(run.graph, run.graph.constant(batch.images))
        let got = Array(logits.value.array.prefix(cCell))
        run.graph.clearTape()

        // The reference: every BN in evaluation mode with fresh statistics divides by √(1 + 1e-5).
        let f = 1 / (1 + 1e-5 as Double).squareRoot()
        var x = [[Double]](repeating: [Double](repeating: 0, count: cCell), count: 2)
        for (e, p) in [pre0, pre1].enumerated() {
            for j in 0..<cCell {
                var sum = 0.0
                for i in 0..<cStem { sum += Double(p.value[j * cStem + i]) * Double(s[i]) }
                x[e][j] = f * sum
            }
        }
        let opFactor = op == "max_pool_3x3" ? f : 1   // max_pool_3x3 without affine ops is followed by a BN; skip_connect is the input
        let q = cCell / k
        var expected = [Float](repeating: 0, count: cCell)
        for i in 0..<q {
            for g in 0..<k {
                var sum = 0.0
                for e in 0..<2 { sum += Double(edgeWeights[e]) * (g == 0 ? opFactor * x[e][i] : x[e][g * q + i]) }
                expected[i * k + g] = Float(sum)
            }
        }
        return (got, expected)
    }

    func assertChannels(_ r: (got: [Float], expected: [Float]), _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.got.count, r.expected.count, what, file: file, line: line)
        XCTAssertEqual(Set(r.expected.map { ($0 * 1e4).rounded() }).count, r.expected.count, "\(what): every channel has its own value", file: file, line: line)
        for (o, (a, b)) in zip(r.got, r.expected).enumerated() {
            XCTAssertEqual(a, b, accuracy: 1e-5 * abs(b), "\(what): output channel \(o) (got \(r.got), expected \(r.expected))", file: file, line: line)
        }
    }

    func testNormalCell_ShuffleChannelByChannel() throws {
        for k in [2, 4] { assertChannels(try shuffledNode(reduction: false, op: "skip_connect", k: k), "normal cell, K = \(k)") }
    }

    func testReductionCell_ShuffleChannelByChannel() throws {
        for k in [2, 4] { assertChannels(try shuffledNode(reduction: true, op: "max_pool_3x3", k: k), "reduction cell, K = \(k)") }
    }
}
