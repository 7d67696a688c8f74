// A plugin instance's own state (ABI 1.3 save_state / load_state) through the host's adapters, on
// the C fixture: the blob round-trips into a fresh instance, a blob the plugin rejects is an error
// with its message, a plugin declaring ABI 1.2 (its tables without the new fields, or with them
// but an old minor) loads and works with no state, and the Swift kit's reader refuses bad bytes.

import CEspalierSDK
import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class PluginStateTests: XCTestCase {
    static var fixtureDir: String?

    /// The current fixture, the fixture with ABI 1.2 tables (declaring 1.2), and the current
    /// fixture declaring 1.2 (its tables have the fields; the host must not read them).
    func registry(_ context: HostContext) throws -> PluginRegistry {
        if Self.fixtureDir == nil {
            let dir = try PluginFixtures.tempDir()
            try PluginFixtures.build("libespalier-fixture.so", in: dir)
            try PluginFixtures.build("libespalier-old.so", in: dir, defines: ["FIX_TABLES_1_2", "FIX_MINOR=2", "FIX_ID=\"org.old\""])
            try PluginFixtures.build("libespalier-m2.so", in: dir, defines: ["FIX_MINOR=2", "FIX_ID=\"org.m2\""])
            Self.fixtureDir = dir
        }
        let r = PluginLoader(context: context).load(PluginSearchPath(directories: [Self.fixtureDir!]))
        XCTAssertEqual(r.failures.map(\.description), [])
        return r
    }

    func strategy(_ prefix: String, _ context: HostContext, _ reg: PluginRegistry) throws -> PluginStrategy {
        try PluginStrategy(try reg.require("\(prefix).strategy.warmup/1"), context: context, settings: ["warmup": "1", "epochs": "10"])
    }

    func endEpochs(_ s: PluginStrategy, _ n: Int) throws {
        for e in 0..<n {
            var st = RunState(); st.epoch = e
            XCTAssertFalse(try s.epochEnd(st, metrics: EpochMetrics()))
        }
    }

    func testSavedState_RestoresIntoAFreshInstance() throws {
        let context = HostContext()
        let reg = try registry(context)
        let a = try strategy("org.fixture", context, reg)
        XCTAssertEqual(try a.saveState(), [1, 0, 0, 0, 0, 0, 0, 0, 0], "a fresh instance has ended no epoch")
        try endEpochs(a, 3)
        let blob = try XCTUnwrap(try a.saveState())
        XCTAssertEqual(blob, [1, 3, 0, 0, 0, 0, 0, 0, 0])
        let b = try strategy("org.fixture", context, reg)
        XCTAssertTrue(try b.loadState(blob))
        try endEpochs(b, 1)
        XCTAssertEqual(try b.saveState(), [1, 4, 0, 0, 0, 0, 0, 0, 0], "the restored count goes on")
    }

    func testRejectedState_IsAnErrorWithThePluginsMessage() throws {
        let context = HostContext()
        let s = try strategy("org.fixture", context, try registry(context))
        XCTAssertThrowsError(try s.loadState([2, 0, 0])) { error in
            XCTAssertTrue("\(error)".contains("org.fixture.strategy.warmup/1: load_state"), "\(error)")
            XCTAssertTrue("\(error)".contains("saved state of 3 bytes, format 2; expected 9 bytes, format 1"), "\(error)")
        }
    }

    func testABI12Plugins_LoadAndWorkWithoutState() throws {
        let context = HostContext()
        let reg = try registry(context)
        for prefix in ["org.old", "org.m2"] {
            XCTAssertEqual(reg.component(id: "\(prefix).strategy.warmup/1")?.library.abi.minor, 2)
            let s = try strategy(prefix, context, reg)
            XCTAssertNil(try s.saveState(), "\(prefix): a 1.2 plugin has no save_state for this host")
            XCTAssertFalse(try s.loadState([1, 3, 0, 0, 0, 0, 0, 0, 0]), "\(prefix): the blob is ignored")
            var st = RunState(); st.step = 0
            XCTAssertEqual(try s.planStep(st).mode, .weightsOnly)
            st.epoch = 9
            XCTAssertTrue(try s.epochEnd(st, metrics: EpochMetrics()))
            let r = try PluginRegularizer(try reg.require("\(prefix).regularizer.l2/1"), context: context)
            XCTAssertNil(try r.saveState())
            XCTAssertTrue(r.hasProximal)
        }
        // The current fixture's table, read as a 1.3 plugin, does have them.
        XCTAssertNotNil(try strategy("org.fixture", context, reg).saveState())
    }
}
