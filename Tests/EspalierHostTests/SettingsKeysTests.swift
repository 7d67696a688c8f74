// Settings keys and config files (issue 14): components that share a short name, a regularizer
// selected twice, id-qualified and indexed keys; YAML configs with nested aliases ("billion
// laughs"), duplicate keys and oversized files; plugin folders and files that are skipped,
// parameter names outside [a-z0-9_.-] and dynamic methods that reuse a taken name.
// Fixture: Fixtures/settings_fixture.c, built twice under two vendors' ids.

import CEspalierSDK
import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class SettingsKeysTests: XCTestCase {
    /// org.a.* and org.b.*: two regularizers with the short name `count`.
    static let twoVendors: String = {
        let dir = try! buildSettingsFixture("libespalier-a.so", defines: ["FIX_ID=\"org.a\""])
        _ = try! buildSettingsFixture("libespalier-b.so", in: dir, defines: ["FIX_ID=\"org.b\""])
        return dir
    }()
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(
        PluginSearchPath.standard(extraDirectories: [twoVendors], environment: [:]))
    let a = "org.a.regularizer.count/1", b = "org.b.regularizer.count/1"

    func resolve(_ regs: [String], _ set: [String: String]) throws -> Selection {
        try Selection.resolve(SelectionRequest(strategy: "espalier.strategy.darts/1", gate: "espalier.gate.softmax/1",
                                               ops: ["espalier.op.none/1"], regularizers: regs, set: set), registry: Self.registry)
    }

    func error(_ regs: [String], _ set: [String: String]) -> String {
        do { _ = try resolve(regs, set); return "no error" } catch { return "\(error)" }
    }

    // MARK: Keys

    func testTwoComponentsWithTheSameShortName_CanBeSelectedTogether_WithIdQualifiedKeys() throws {
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        let s = try resolve([a, b], ["\(a).weight": "2", "\(b).weight": "3", "gate.tau": "0.5", "espalier.strategy.darts/1.order": "second"])
        XCTAssertEqual(s.regularizers.map(\.settings), [["weight": "2"], ["weight": "3"]])
        XCTAssertEqual(s.regularizers.map(\.key), [a, b], "an ambiguous short name lists them by id")
        XCTAssertEqual(s.gate?.settings, ["tau": "0.5"])
        XCTAssertEqual(s.strategy?.settings, ["order": "second"], "the strategy by its id as well as by 'strategy'")
        // The short name alone is ambiguous: refused, naming both ids and the qualified key.
        let e = error([a, b], ["count.weight": "2"])
        XCTAssertTrue(e.contains("2 selected components are called 'count' (\(a), \(b))") && e.contains("\(a).weight"), e)
        // Unambiguous, the short name still works.
        XCTAssertEqual(try resolve([a], ["count.weight": "4"]).regularizers[0].settings, ["weight": "4"])
    }

    func testTheSameRegularizerTwice_TakesAnIndexPerOccurrence() throws {
        let s = try resolve([a, a], ["count#1.weight": "2", "\(a)#2.weight": "3"])
        XCTAssertEqual(s.regularizers.map(\.settings), [["weight": "2"], ["weight": "3"]])
        XCTAssertEqual(s.regularizers.map(\.instanceKey), [a, a + "#2"])
        XCTAssertEqual(s.regularizers.map(\.key), ["count#1", "count#2"])
        XCTAssertEqual(Selection.instanceKeys([a, b, a]), [a, b, a + "#2"])
        let e = error([a, a], ["count.weight": "2"])
        XCTAssertTrue(e.contains("'count' is selected 2 times; say which: count#1.weight, count#2.weight"), e)
        XCTAssertTrue(error([a, a], ["count#3.weight": "2"]).contains("#3 does not exist"))
        XCTAssertTrue(error([], ["org.a.regularizer.count/1.weight": "2"]).contains("no selected component is called 'org.a.regularizer.count/1'"))
        // An op twice is still refused (one candidate per op on an edge), with the reason.
        XCTAssertThrowsError(try Selection.resolve(SelectionRequest(ops: ["espalier.op.none/1", "espalier.op.none/1"]), registry: Self.registry)) {
            XCTAssertTrue("\($0)".contains("op espalier.op.none/1 is selected twice"), "\($0)")
        }
    }

    // MARK: Config files

    func testBillionLaughsConfig_IsRefusedQuickly() throws {
        let dir = try PluginFixtures.tempDir("config")
        var lines = ["a0: &a0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]"]
        for i in 1..<9 { lines.append("a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 9).joined(separator: ", ") + "]") }
        lines.append("set: *a8")
        let file = dir + "/laughs.yaml"
        try lines.joined(separator: "\n").write(toFile: file, atomically: true, encoding: .utf8)
        let started = Date()
        XCTAssertThrowsError(try SelectionRequest.load(file: file)) { e in
            XCTAssertTrue("\(e)".contains("expands to more than \(ConfigFile.maxValues) values through YAML aliases"), "\(e)")
            XCTAssertTrue("\(e)".contains(file), "\(e)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 2, "refused before expanding")
    }

    func testDuplicateYAMLKeys_AreRefused_NamingTheKeyAndTheFile() throws {
        let dir = try PluginFixtures.tempDir("config")
        let top = dir + "/top.yaml"
        try "strategy: espalier.strategy.darts/1\ngate: espalier.gate.softmax/1\nstrategy: espalier.strategy.gdas/1\n".write(toFile: top, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SelectionRequest.load(file: top)) {
            XCTAssertTrue("\($0)".contains("\(top): the key 'strategy' appears twice (again on line 3)"), "\($0)")
        }
        let nested = dir + "/nested.yaml"
        try "set:\n  gate.tau: 2\n  gate.tau: 3\n".write(toFile: nested, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SelectionRequest.load(file: nested)) {
            XCTAssertTrue("\($0)".contains("the key 'gate.tau' appears twice in 'set'"), "\($0)")
        }
        // JSON too (JSONSerialization alone keeps the last one silently).
        let json = dir + "/dup.json"
        try "{\"strategy\": \"espalier.strategy.darts/1\",\n \"set\": {\"gate.tau\": 2,\n  \"gate.tau\": 3}}".write(toFile: json, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SelectionRequest.load(file: json)) {
            XCTAssertTrue("\($0)".contains("\(json): the key 'gate.tau' appears twice in 'set' (again on line 3)"), "\($0)")
        }
        // A well-formed file still loads, numbers and booleans as text.
        let good = dir + "/good.yaml"
        try "strategy: espalier.strategy.darts/1\nops: [espalier.op.none/1]\nset:\n  gate.tau: 2\n  strategy.flag: true\n".write(toFile: good, atomically: true, encoding: .utf8)
        let r = try SelectionRequest.load(file: good)
        XCTAssertEqual(r.ops, ["espalier.op.none/1"])
        XCTAssertEqual(r.set, ["gate.tau": "2", "strategy.flag": "true"])
    }

    func testOversizedConfig_IsRefusedBeforeParsing() throws {
        let dir = try PluginFixtures.tempDir("config")
        let file = dir + "/big.yaml"
        try ("set:\n" + String(repeating: "  # padding padding padding padding padding padding\n", count: 25_000)).write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SelectionRequest.load(file: file)) { XCTAssertTrue("\($0)".contains("is larger than 1024 KiB"), "\($0)") }
    }

    // MARK: Loading

    func testSkippedPluginFoldersAndFiles_AreWarnedAbout() throws {
        let dir = try buildSettingsFixture()
        try "x".write(toFile: dir + "/libswish.so", atomically: true, encoding: .utf8)
        let file = dir + "/libespalier-settings.so"
        let registry = PluginLoader(context: HostContext()).load(PluginSearchPath(directories: [dir, dir + "/nowhere", file]))
        XCTAssertEqual(registry.failures.map(\.description), [])
        XCTAssertEqual(registry.libraries.count, 1)
        let w = registry.warnings.joined(separator: "\n")
        XCTAssertTrue(w.contains("\(dir)/libswish.so: skipped, not named libespalier-NAME.so"), w)
        XCTAssertTrue(w.contains("plugin folder \(dir)/nowhere does not exist"), w)
        XCTAssertTrue(w.contains("plugin folder \(file) is a file, not a folder"), w)
    }

    func testParameterNameOutsideTheAllowedCharacters_IsRefusedAtLoad() throws {
        let dir = try buildSettingsFixture(defines: ["FIX_BAD_PARAM_NAME"])
        let registry = PluginLoader(context: HostContext()).load(PluginSearchPath(directories: [dir]))
        XCTAssertEqual(registry.libraries.count, 0)
        let reason = registry.failures.first?.reason ?? ""
        XCTAssertTrue(reason.contains("org.settings.op.scaled/1 parameter name 'λ' must use only a-z, 0-9"), reason)
    }

    func testDynamicMethodReusingABuiltInName_IsWarnedAbout() throws {
        let dir = try buildSettingsFixture(defines: ["FIX_SHADOW"])
        let registry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(extraDirectories: [dir], environment: [:]))
        XCTAssertEqual(registry.failures.map(\.description), [])
        let w = registry.warnings.joined(separator: "\n")
        XCTAssertTrue(w.contains("dynamic method tau.schedule=linear-decay of org.settings.gate.clock/1 (libespalier-settings.so) has the name of espalier.gate."), w)
        XCTAssertTrue(w.contains("which is loaded first and used"), w)
    }
}
