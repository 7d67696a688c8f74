// The C sample strategy (Samples/c-patience-strategy, built with the tree) through the host: its
// weight-only warm-up, the early stop after `patience` epochs without a better validation
// accuracy, its 13-byte saved state carrying the count across a resume (and a fresh instance
// starting over without it), a bad blob refused with its message, and a short search it drives.

import EspalierCore
import EspalierHost
import EspalierSearch
import XCTest

final class PatienceSampleTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))
    let id = "org.example.strategy.patience/1"

    func make(_ context: HostContext = HostContext()) throws -> PluginStrategy {
        try PluginStrategy(try Self.registry.require(id, kind: .strategy), context: context, settings: ["warmup_epochs": "1", "patience": "2"])
    }

    /// epoch_end after `epoch` with validation accuracy `accuracy`: true = stop.
    func end(_ s: PluginStrategy, epoch: Int, accuracy: Double) throws -> Bool {
        var st = RunState()
        st.epoch = epoch
        var m = EpochMetrics()
        m.validAccuracy = accuracy
        return try s.epochEnd(st, metrics: m)
    }

    func testWarmUp_ThenStopsAfterPatienceEpochsWithoutImprovement_TheCountSurvivesItsState() throws {
        let s = try make()
        var st = RunState()
        XCTAssertEqual(try s.planStep(st).mode, .weightsOnly, "epoch 0 is warm-up")
        st.epoch = 1
        XCTAssertEqual(try s.planStep(st).mode, .bilevel)
        XCTAssertFalse(try end(s, epoch: 0, accuracy: 0.9), "warm-up epochs are not judged")
        XCTAssertFalse(try end(s, epoch: 1, accuracy: 0.5), "best 0.5")
        XCTAssertFalse(try end(s, epoch: 2, accuracy: 0.4), "one epoch without improvement")
        let blob = try XCTUnwrap(try s.saveState())
        XCTAssertEqual(blob.count, 13)
        XCTAssertEqual(blob.first, 1, "format byte")
        XCTAssertTrue(try end(s, epoch: 3, accuracy: 0.45), "two without improvement: stop")
        let resumed = try make()
        XCTAssertTrue(try resumed.loadState(blob))
        XCTAssertTrue(try end(resumed, epoch: 3, accuracy: 0.45), "resumed from the blob, the same decision")
        XCTAssertFalse(try end(try make(), epoch: 3, accuracy: 0.45), "a fresh instance starts over: 0.45 is its best")
        XCTAssertThrowsError(try make().loadState([2] + blob.dropFirst())) { XCTAssertTrue("\($0)".contains("13 bytes of format 1"), "\($0)") }
        XCTAssertThrowsError(try make().loadState(Array(blob.prefix(9)))) { XCTAssertTrue("\($0)".contains("13 bytes of format 1"), "\($0)") }
    }

    func testShortSearch_WarmUpLeavesAlphaAlone_ThenTrainsIt() throws {
        var c = tinySearchConfig(strategy: id, settings: ["warmup_epochs": "1", "patience": "5"], epochs: 1)
        let warm = try syntheticSearchRun(c, registry: Self.registry)
        let alpha0 = warm.supernet.alphaNormal.value.array
        try warm.run()
        XCTAssertEqual(warm.supernet.alphaNormal.value.array, alpha0, "one warm-up epoch: weight-only steps")
        c.epochs = 2
        let run = try syntheticSearchRun(c, registry: Self.registry)
        try run.run()
        XCTAssertNotEqual(run.supernet.alphaNormal.value.array, alpha0, "after the warm-up α trains")
        XCTAssertEqual(try run.derive().normal.count, 2 * c.space.nodes, "the host's DARTS rule derives")
    }
}
