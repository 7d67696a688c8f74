// GDAS's hard gate on the forward-only (no-tape) path — a `.forwardOnly` step and batch-norm
// recalibration (training mode under noGrad), and evaluation — runs the sampled candidate of each
// edge and no other, as the taped path does (GdasProxylessSearchTests): with α forcing a different op on each
// edge, exactly that op allocates (the accountant's per-owner table), in training mode (a Gumbel
// draw) and in evaluation mode (argmax); and the logits equal those of the same supernet with
// every other op masked.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class GdasForwardOnlyTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))
    static let ops = ["max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "dil_conv_3x3"]   // every one allocates when it runs

    /// 3 cells (one reduction), 2 nodes (5 edges per cell), C = 4, 16×16 images; α set so that
    /// edge e of the normal cell draws op (e mod 4), of the reduction cell op (e + 1 mod 4)
    /// (α 30 against −30: no Gumbel draw overturns it).
    func makeRun() throws -> SearchRun {
        var c = tinySearchConfig(strategy: "espalier.strategy.gdas/1", ops: Self.ops.map { "espalier.op.\($0)/1" })
        c.gate = "espalier.gate.gdas/1"
        c.space.cells = 3
        c.seed = 9
        let run = try syntheticSearchRun(c, registry: Self.registry, images: 16, size: 16)
        for (alpha, shift) in [(run.supernet.alphaNormal, 0), (run.supernet.alphaReduce, 1)] {
            for e in 0..<c.space.edgesPerCell { for o in 0..<Self.ops.count { alpha.value[e * Self.ops.count + o] = o == forced(e, shift) ? 30 : -30 } }
        }
        return run
    }

    func forced(_ edge: Int, _ shift: Int) -> Int { (edge + shift) % Self.ops.count }

    /// Ops (by name) that allocated anything during `body`, per "cellI/edgeE".
    func runningOps(_ run: SearchRun, _ body: () throws -> Void) throws -> [String: [String]] {
        let acc = run.accountant
        let before = Dictionary(acc.ownerTable().map { ($0.owner, $0.current.total) }, uniquingKeysWith: +)
        acc.resetPeak()
        try body()
        var out: [String: Set<String>] = [:]
        for row in acc.ownerTable() where row.peak - (before[row.owner] ?? 0) > 0 {
            // …/cellI/edgeE/OP[/…]
            let parts = row.owner.split(separator: "/")
            guard let c = parts.firstIndex(where: { $0.hasPrefix("cell") }), c + 2 < parts.count, parts[c + 1].hasPrefix("edge") else { continue }
            out["\(parts[c])/\(parts[c + 1])", default: []].insert(String(parts[c + 2]))
        }
        return out.mapValues { $0.sorted() }
    }

    func assertOnlyTheForcedOpsRan(_ running: [String: [String]], _ run: SearchRun, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let sp = run.supernet.space
        for cell in 0..<sp.cells {
            let shift = sp.reductions.contains(cell) ? 1 : 0
            for e in 0..<sp.edgesPerCell {
                XCTAssertEqual(running["cell\(cell)/edge\(e)"], [Self.ops[forced(e, shift)]],
                               "\(what): cell\(cell)/edge\(e) runs its sampled op only", file: file, line: line)
            }
        }
    }

    func testForwardOnly_TrainingMode_RunsOnlyTheSampledOps() throws {
        // A strategy's `.forwardOnly` step and batch-norm recalibration: graph.noGrad over
        // lossAndGradients, training mode (a Gumbel draw per edge), no backward.
        let run = try makeRun()
        let batch = try run.trainLoader.nextCycling(accountant: run.accountant)
        run.train(weights: false, arch: false)
        let running = try runningOps(run) {
            try run.graph.noGrad {
                XCTAssertFalse(run.graph.isRecording)
                _ = try run.lossAndGradients(batch.images, batch.labels, backward: false)
            }
        }
        assertOnlyTheForcedOpsRan(running, run, "training-mode forward without tape")
        // The same with the taped forward (the path the existing tests check), for reference.
        let taped = try runningOps(run) { _ = try run.lossAndGradients(batch.images, batch.labels, backward: false) }
        assertOnlyTheForcedOpsRan(taped, run, "taped forward")

        // The forward-only logits equal a supernet's whose unsampled ops are masked (batch
        // statistics in training mode: the running statistics do not enter).
        let masked = try makeRun()
        let sp = masked.supernet.space
        for (reduction, shift) in [(false, 0), (true, 1)] {
            for e in 0..<sp.edgesPerCell { for o in 0..<Self.ops.count where o != forced(e, shift) { try masked.setOpState(reduction: reduction, edge: e, op: o, .masked) } }
        }
        masked.train(weights: false, arch: false)
        let forwardOnly = try run.graph.noGrad { try run.supernet.logits(run.graph, run.graph.constant(batch.images)).value.array }
        let reference = try masked.graph.noGrad { try masked.supernet.logits(masked.graph, masked.graph.constant(batch.images)).value.array }
        XCTAssertEqual(forwardOnly.count, reference.count)
        for (i, (a, b)) in zip(forwardOnly, reference).enumerated() {
            XCTAssertEqual(a, b, accuracy: 1e-5 * max(1, abs(b)), "logit \(i): forward-only with the hard gate vs the unsampled ops masked")
        }
    }

    func testForwardOnly_Evaluation_RunsOnlyTheArgmaxOps() throws {
        let run = try makeRun()
        let running = try runningOps(run) { _ = try run.evaluate(run.validLoader.view) }
        assertOnlyTheForcedOpsRan(running, run, "evaluation")
    }
}
