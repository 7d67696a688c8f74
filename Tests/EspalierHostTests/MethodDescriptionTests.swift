// Methods by name through the ABI (1.5, es_method_desc): the C fixture's warm-up strategy brings
// "fixture-warmup"; the same fixture built for ABI 1.4 (descriptions that end before `method`)
// still loads and brings none; the resolver fills a method's defaults under what the request
// says, accepts unique short names, and refuses typos ("did you mean") and ambiguous short names
// (naming the candidates). Fixture: Fixtures/fixture.c.

import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class MethodDescriptionTests: XCTestCase {
    func registry(_ builds: [(String, [String])]) throws -> PluginRegistry {
        let dir = try PluginFixtures.tempDir("methods")
        for (file, defines) in builds { try PluginFixtures.build(file, in: dir, defines: defines) }
        return PluginLoader(context: HostContext()).load(PluginSearchPath.standard(extraDirectories: [dir], environment: [:]))
    }

    func message(_ body: () throws -> Any) -> String {
        do { _ = try body(); return "no error" } catch { return "\(error)" }
    }

    func testFixtureBringsItsMethod_WithEveryField() throws {
        let r = try registry([("libespalier-fixture.so", [])])
        XCTAssertEqual(r.failures.map(\.description), [])
        let m = try r.searchMethod(named: "fixture-warmup")
        XCTAssertEqual(m, SearchMethod(name: "fixture-warmup", summary: "warm-up then bilevel with the linear gate and L2",
                                       describedBy: "org.fixture.strategy.warmup/1", strategy: "org.fixture.strategy.warmup/1",
                                       gate: "org.fixture.gate.linear/1", regularizers: ["org.fixture.regularizer.l2/1"],
                                       settings: ["strategy.warmup=5", "l2.lambda=0.25"]))
        XCTAssertEqual(r.component(id: "org.fixture.strategy.warmup/1")?.method?.name, "fixture-warmup")
        XCTAssertNil(r.component(id: "org.fixture.strategy.pruner/1")?.method)
    }

    func testPluginBuiltForABI14_StillLoads_AndBringsNoMethod() throws {
        // Descriptions as 1.4 laid them out (struct_size ends before `method`), and a 1.4 plugin
        // whose descriptions happen to be 1.5-sized: neither is read for a method.
        for defines in [["FIX_MINOR=4", "FIX_DESC_1_4"], ["FIX_MINOR=4"]] {
            let r = try registry([("libespalier-fixture.so", defines)])
            XCTAssertEqual(r.failures.map(\.description), [], "\(defines)")
            let warmup = try XCTUnwrap(r.component(id: "org.fixture.strategy.warmup/1"), "\(defines)")
            XCTAssertEqual(warmup.library.abi.minor, 4)
            XCTAssertNil(warmup.method, "\(defines)")
            XCTAssertTrue(message { try r.searchMethod(named: "fixture-warmup") }.contains("unknown method 'fixture-warmup'"), "\(defines)")
            // Its components are still selectable, by id and by short name.
            let s = try Selection.resolve(SelectionRequest(strategy: "warmup", gate: "linear", regularizers: ["l2"]), registry: r)
            XCTAssertEqual(s.all.map(\.component.id), ["org.fixture.strategy.warmup/1", "org.fixture.gate.linear/1", "org.fixture.regularizer.l2/1"])
        }
    }

    func testMethodDefaults_UnderTheRequest_ExplicitValuesWin() throws {
        let r = try registry([("libespalier-fixture.so", [])])
        let plain = try r.applyMethod(SelectionRequest(method: "fixture-warmup"))
        var s = try Selection.resolve(plain.request, registry: r, defaultSettings: plain.defaultSettings)
        XCTAssertEqual(s.strategy?.component.id, "org.fixture.strategy.warmup/1")
        XCTAssertEqual(s.strategy?.settings, ["warmup": "5"])
        XCTAssertEqual(s.gate?.component.id, "org.fixture.gate.linear/1")
        XCTAssertEqual(s.regularizers.map(\.component.id), ["org.fixture.regularizer.l2/1"])
        XCTAssertEqual(s.regularizers.map(\.settings), [["lambda": "0.25"]])
        XCTAssertEqual(s.ops.count, 0, "the method names no ops and none were asked for")

        // --set overrides one default and keeps the others.
        let set = try r.applyMethod(SelectionRequest(set: ["l2.lambda": "0.75"], method: "fixture-warmup"))
        s = try Selection.resolve(set.request, registry: r, defaultSettings: set.defaultSettings)
        XCTAssertEqual(s.regularizers.map(\.settings), [["lambda": "0.75"]])
        XCTAssertEqual(s.strategy?.settings, ["warmup": "5"])

        // Another strategy replaces the method's, and the method's strategy settings go with it;
        // no regularizers asked for keeps the method's.
        let other = try r.applyMethod(SelectionRequest(strategy: "org.fixture.strategy.pruner/1", method: "fixture-warmup"))
        s = try Selection.resolve(other.request, registry: r, defaultSettings: other.defaultSettings)
        XCTAssertEqual(s.strategy?.component.id, "org.fixture.strategy.pruner/1")
        XCTAssertEqual(s.strategy?.settings, [:])
        XCTAssertEqual(s.regularizers.map(\.settings), [["lambda": "0.25"]])

        // Other regularizers replace the method's; its setting of l2 is then dropped, not an error.
        let regs = try r.applyMethod(SelectionRequest(regularizers: ["espalier.regularizer.beta-decay/1"], method: "fixture-warmup"))
        s = try Selection.resolve(regs.request, registry: r, defaultSettings: regs.defaultSettings)
        XCTAssertEqual(s.regularizers.map(\.component.id), ["espalier.regularizer.beta-decay/1"])
        XCTAssertEqual(s.regularizers.map(\.settings), [[:]])
    }

    func testAddOps_AddToTheDefaultOrGivenOps_OpsReplaceThem() throws {
        let r = try registry([("libespalier-fixture.so", [])])
        let added = try r.applyMethod(SelectionRequest(addOps: ["relu-conv"]))
        XCTAssertEqual(try Selection.resolve(added.request, registry: r).ops.map(\.component.id),
                       PluginRegistry.dartsOps + ["org.fixture.op.relu-conv/1"])
        let onGiven = try r.applyMethod(SelectionRequest(ops: ["espalier.op.none/1"], addOps: ["relu-conv"]), defaultOps: PluginRegistry.dartsOps)
        XCTAssertEqual(try Selection.resolve(onGiven.request, registry: r).ops.map(\.component.id), ["espalier.op.none/1", "org.fixture.op.relu-conv/1"])
        let replaced = try r.applyMethod(SelectionRequest(ops: ["relu-conv"]), defaultOps: PluginRegistry.dartsOps)
        XCTAssertEqual(try Selection.resolve(replaced.request, registry: r).ops.map(\.component.id), ["org.fixture.op.relu-conv/1"])
        let twice = try r.applyMethod(SelectionRequest(addOps: ["skip_connect"]), defaultOps: PluginRegistry.dartsOps)
        XCTAssertTrue(message { try Selection.resolve(twice.request, registry: r) }.contains("op espalier.op.skip_connect/1 is selected twice"))
    }

    func testShortNames_Typos_AndAmbiguity() throws {
        let r = try registry([("libespalier-a.so", ["FIX_ID=\"org.a\""]), ("libespalier-b.so", ["FIX_ID=\"org.b\""])])
        XCTAssertEqual(r.failures.map(\.description), [])
        XCTAssertEqual(try r.require("gdas", kind: .strategy).id, "espalier.strategy.gdas/1")
        XCTAssertEqual(try r.require("gdas", kind: .gate).id, "espalier.gate.gdas/1")
        XCTAssertEqual(try r.require("espalier.gate.gdas", kind: .gate).id, "espalier.gate.gdas/1", "the id without its revision")
        XCTAssertEqual(try r.require("beta-decay", kind: .regularizer).id, "espalier.regularizer.beta-decay/1")
        XCTAssertEqual(try r.require("sep_conv_3x3", kind: .op).id, "espalier.op.sep_conv_3x3/1")

        let typo = message { try r.require("gdsa", kind: .strategy) }
        XCTAssertTrue(typo.contains("unknown strategy 'gdsa'; did you mean 'gdas' (espalier.strategy.gdas/1)?"), typo)
        let far = message { try r.require("banana", kind: .strategy) }
        XCTAssertFalse(far.contains("did you mean"), far)
        XCTAssertTrue(far.contains("available: ") && far.contains("espalier.strategy.darts/1"), far)
        let kind = message { try r.require("espalier.gate.gdas/1", kind: .strategy) }
        XCTAssertTrue(kind.contains("'espalier.gate.gdas/1' is a gate, not a strategy"), kind)

        let ambiguous = message { try r.require("warmup", kind: .strategy) }
        XCTAssertTrue(ambiguous.contains("'warmup' is ambiguous: 2 strategies are called that (org.a.strategy.warmup/1, org.b.strategy.warmup/1); give the full id"),
                      ambiguous)
        let near = message { try r.require("warmap", kind: .strategy) }
        XCTAssertTrue(near.contains("did you mean 'org.a.strategy.warmup/1'") || near.contains("did you mean 'org.b.strategy.warmup/1'"),
                      "a shared short name is suggested by id: \(near)")

        // Two libraries bring a method of one name: the first is kept, the second is a warning.
        XCTAssertEqual(try r.searchMethod(named: "fixture-warmup").describedBy, "org.a.strategy.warmup/1")
        XCTAssertTrue(r.warnings.contains { $0.contains("method 'fixture-warmup' of org.b.strategy.warmup/1") && $0.contains("already brings") }, "\(r.warnings)")
        let method = message { try r.searchMethod(named: "gdsa") }
        XCTAssertTrue(method.contains("unknown method 'gdsa'; did you mean 'gdas'?") && method.contains("the methods are "), method)
    }
}
