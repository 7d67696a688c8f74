// MergeNAS in the search trainer (`SearchSpaceDescription.mergedOps`): one merged op per edge in
// place of the four convolutions (which then hold no parameters), α keeping a column per covered
// candidate with a first-order gradient that matches finite differences, a short search on
// synthetic data and on a Fashion-MNIST subset, and the predicted step peak of the merged
// supernet below plain DARTS's on the same space (the accountant's dry run).

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class MergeNASSearchTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))
    static let merged = "espalier.op.mergenas_conv/1"
    static let convs = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]

    /// 2 cells (one normal, one reduction), 2 nodes, the DARTS ops, 8×8 images, the merged op.
    func tinyConfig() -> SearchConfig {
        var c = tinySearchConfig()
        c.space.mergedOps = [Self.merged]
        c.seed = 3
        return c
    }

    func makeRun(_ c: SearchConfig, images: Int = 16) throws -> SearchRun {
        try syntheticSearchRun(c, registry: Self.registry, images: images)
    }

    func testMergedSupernet_OneMergedOpPerEdge_AlphaKeepsTheCoveredColumns_AndSearches() throws {
        let run = try makeRun(tinyConfig())
        let names = run.supernet.weights.map(\.name)
        let edges = 5   // 2 + 3 edges per cell
        for conv in Self.convs {
            XCTAssertFalse(names.contains { $0.contains("/\(conv)/") }, "\(conv) is not built separately")
        }
        XCTAssertEqual(names.filter { $0.hasSuffix("/mergenas_conv/dw1.weight") }.count, 2 * edges, "one shared kernel per edge of each cell")
        XCTAssertEqual(run.supernet.alphaNormal.shape, [edges, 8], "α keeps a column per candidate, the covered ones included")
        let alphaBefore = run.supernet.alphaNormal.value.array
        let kernel = try XCTUnwrap(run.supernet.weights.first { $0.name.hasSuffix("/mergenas_conv/dw1.weight") })
        let kernelBefore = kernel.value.array
        try run.run()
        let alphaAfter = run.supernet.alphaNormal.value.array
        for (o, name) in SearchSpaceDescription.dartsOps.map(Component.shortName).enumerated() where Self.convs.contains(name) {
            let moved = (0..<edges).contains { alphaAfter[$0 * 8 + o] != alphaBefore[$0 * 8 + o] }
            XCTAssertTrue(moved, "α of \(name) is trained through the merged op's mixing weights")
        }
        XCTAssertNotEqual(kernel.value.array, kernelBefore, "the shared kernel is trained")
        XCTAssertTrue(run.logs.last!.trainLoss.isFinite)
        let genotype = try run.derive()
        XCTAssertEqual(genotype.normal.count, 4)
        XCTAssertTrue(genotype.normal.allSatisfy { $0.op != "none" && $0.op != "mergenas_conv" }, "genotypes name the DARTS candidates")
    }

    func testArchGradient_ThroughTheMergedOp_MatchesFiniteDifferences() throws {
        var c = tinyConfig()
        c.space.ops = ["none", "skip_connect", "sep_conv_3x3", "dil_conv_5x5"].map { "espalier.op.\($0)/1" }
        c.opSettings = [Self.merged: ["covers": "sep_conv_3x3,dil_conv_5x5"]]
        let run = try makeRun(c)
        let valid = try run.validLoader.nextCycling(accountant: run.accountant)
        try run.archGradientFirstOrder(valid: valid)
        let alpha = run.supernet.alphaNormal
        let analytic = alpha.grad!.array
        func loss() throws -> Double {
            run.train(weights: false, arch: false)
            return try run.graph.noGrad { try run.lossAndGradients(valid.images, valid.labels, backward: false).0 }
        }
        let eps: Float = 2e-3
        for e in 0..<alpha.shape[0] {
            for o in [2, 3] {   // the columns the merged op stands for
                let i = e * alpha.shape[1] + o
                let old = alpha.value[i]
                alpha.value[i] = old + eps; let lp = try loss()
                alpha.value[i] = old - eps; let lm = try loss()
                alpha.value[i] = old
                let numeric = Float((lp - lm) / Double(2 * eps))
                XCTAssertEqual(analytic[i], numeric, accuracy: 2e-4 + 5e-2 * abs(numeric), "α[edge \(e), op \(o)]")
            }
        }
        XCTAssertGreaterThan((0..<alpha.shape[0]).map { abs(analytic[$0 * 4 + 2]) }.max()!, 1e-6, "covered columns get a gradient")
    }

    func testPredictedStepPeak_MergedSupernetBelowPlainDARTS() throws {
        var merged = tinyConfig()
        merged.space.channels = 8
        merged.space.cells = 3
        merged.space.nodes = 3
        merged.space.multiplier = 3
        merged.space.reductionCells = nil
        merged.batchSize = 16
        var plain = merged
        plain.space.mergedOps = []
        let m = try SearchRun.predictStep(config: merged, registry: Self.registry, imageShape: (1, 16, 16), classes: 10).stepPeak
        let p = try SearchRun.predictStep(config: plain, registry: Self.registry, imageShape: (1, 16, 16), classes: 10).stepPeak
        XCTAssertLessThan(m, p, "merged \(m) B vs DARTS \(p) B")
        XCTAssertLessThan(Double(m), 0.75 * Double(p), "four convolutions' activations become one: merged \(m) B vs DARTS \(p) B")
    }

    func testShortSearch_OnFashionMNISTSubset() throws {
        let acc = MemoryAccountant()
        let train = try fashionMNISTTrainOrSkip(acc)
        var c = SearchConfig.quick
        c.space.channels = 4
        c.space.cells = 3
        c.space.mergedOps = [Self.merged]
        c.batchSize = 16
        c.epochs = 1
        c.trainImages = 128
        c.evalImages = 64
        let run = try SearchRun(config: c, registry: Self.registry, context: HostContext(accountant: acc, seed: c.seed),
                                train: train.all.prefix(128), outDirectory: nil)
        try run.run()
        let log = try XCTUnwrap(run.logs.last)
        XCTAssertTrue(log.trainLoss.isFinite && log.validLoss.isFinite, "\(log.trainLoss), \(log.validLoss)")
        let genotype = try run.derive()
        XCTAssertTrue((genotype.normal + genotype.reduce).allSatisfy { SearchSpaceDescription.dartsOps.map(Component.shortName).contains($0.op) })
    }
}
