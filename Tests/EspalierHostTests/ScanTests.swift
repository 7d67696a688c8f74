// Out-of-process plugin scans (issue 15): a folder of libraries that segfault in their entry,
// init or a constructor, abort, exit, hang, or are truncated copies of a good library. Each is
// refused with its reason, by name, within the timeout; the good fixture and every built-in
// still load; verdicts are cached per file so a second start scans nothing; the commands that
// load plugins keep working beside such a folder.

import CEspalierSDK
import EspalierCore
import EspalierHost
import EspalierTestSupport
import Foundation
import XCTest

final class ScanTests: XCTestCase {
    static let hostileSource = PluginFixtures.repoRoot.appendingPathComponent("Tests/EspalierHostTests/Fixtures/hostile.c").path
    static let timeout = 2.0
    static let abi = PluginScanner.ScanABI(major: UInt32(ESPALIER_ABI_MAJOR), minor: UInt32(ESPALIER_ABI_MINOR), minimumMinor: 0)

    /// A folder with the good fixture, every hostile library, and a truncated copy of a built-in.
    func hostileFolder() throws -> (dir: String, expected: [String: String]) {
        let dir = try PluginFixtures.tempDir("hostile")
        try PluginFixtures.build("libespalier-a-good.so", in: dir, defines: ["FIX_ID=\"org.good\""])
        let cases: [(String, String, String)] = [
            ("libespalier-segv-entry.so", "HOSTILE_SEGV_ENTRY", "crashed during its scan with SIGSEGV"),
            ("libespalier-segv-init.so", "HOSTILE_SEGV_INIT", "crashed during its scan with SIGSEGV"),
            ("libespalier-segv-ctor.so", "HOSTILE_SEGV_CTOR", "crashed during its scan with SIGSEGV"),
            ("libespalier-abort-init.so", "HOSTILE_ABORT_INIT", "crashed during its scan with SIGABRT"),
            ("libespalier-exit-entry.so", "HOSTILE_EXIT_ENTRY", "exited with status 3 during its scan"),
            ("libespalier-loop-init.so", "HOSTILE_LOOP_INIT", "did not finish within 2 s"),
        ]
        var expected: [String: String] = [:]
        for (file, define, reason) in cases {
            try PluginFixtures.build(file, in: dir, defines: [define], source: Self.hostileSource)
            expected[dir + "/" + file] = reason
        }
        // A truncated copy of a built-in (a download cut short): the loader maps pages past its end.
        let whole = try Data(contentsOf: URL(fileURLWithPath: PluginFixtures.builtPluginDir + "/libespalier-gates.so"))
        try whole.prefix(whole.count / 10).write(to: URL(fileURLWithPath: dir + "/libespalier-truncated.so"))
        expected[dir + "/libespalier-truncated.so"] = "crashed during its scan with SIGBUS"
        return (dir, expected)
    }

    func scanner(cache: String) throws -> PluginScanner {
        let exe = EspalierProcess.binary
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: exe), "espalier is built beside the tests")
        return PluginScanner(executable: exe, timeout: Self.timeout, cachePath: cache)
    }

    func testHostileLibraries_AreRefusedWithTheirReason_AndEverythingElseLoads() throws {
        let (dir, expected) = try hostileFolder()
        let cache = try PluginFixtures.tempDir("scan-cache") + "/scan.json"
        let loader = PluginLoader(context: HostContext())
        loader.scanner = try scanner(cache: cache)
        let start = Date()
        let registry = loader.load(PluginSearchPath.standard(extraDirectories: [dir], environment: [:]))
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertLessThan(elapsed, Self.timeout + 8, "the scan finishes within its timeout and a few seconds")
        let failures = Dictionary(registry.failures.map { ($0.path, $0.reason) }, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(Set(failures.keys), Set(expected.keys), "\(registry.failures)")
        for (path, reason) in expected where !reason.isEmpty {
            XCTAssertTrue(failures[path]?.contains(reason) ?? false, "\(path): \(failures[path] ?? "loaded")")
        }
        XCTAssertNotNil(registry.component(id: "org.good.gate.linear/1"), "the good fixture loads")
        for id in ["espalier.strategy.darts/1", "espalier.gate.softmax/1", "espalier.op.sep_conv_3x3/1", "espalier.strategy.gdas/1"] {
            XCTAssertNotNil(registry.component(id: id), "built-in \(id) loads")
        }

        // A second start: every verdict from the cache, so the hanging library costs nothing.
        let again = PluginLoader(context: HostContext())
        again.scanner = try scanner(cache: cache)
        let t0 = Date()
        let second = again.load(PluginSearchPath(directories: [dir]))
        XCTAssertLessThan(Date().timeIntervalSince(t0), 1.0, "cached verdicts: no child process waits for the timeout")
        XCTAssertEqual(Set(second.failures.map(\.path)), Set(expected.keys))
        XCTAssertEqual(second.failures.first { $0.path.hasSuffix("loop-init.so") }?.reason, failures[dir + "/libespalier-loop-init.so"])

        // A library changed on disk is scanned again: the hanging one, rebuilt well-formed, loads.
        try FileManager.default.removeItem(atPath: dir + "/libespalier-loop-init.so")
        try PluginFixtures.build("libespalier-loop-init.so", in: dir, defines: [], source: Self.hostileSource)
        let third = PluginLoader(context: HostContext())
        third.scanner = try scanner(cache: cache)
        let fixed = third.load(PluginSearchPath(directories: [dir]))
        XCTAssertFalse(fixed.failures.contains { $0.path.hasSuffix("loop-init.so") }, "\(fixed.failures)")
        XCTAssertTrue(fixed.libraries.contains { $0.path.hasSuffix("loop-init.so") })
    }

    func testScanVerdicts_MatchTheInProcessChecks() throws {
        // A refusal found by the child reads as the in-process one did.
        let dir = try PluginFixtures.tempDir()
        try PluginFixtures.build("libespalier-e-init.so", in: dir, defines: ["FIX_INIT_FAILS", "FIX_ID=\"org.e\""])
        let cache = try PluginFixtures.tempDir("scan-cache") + "/scan.json"
        let r = try scanner(cache: cache).scanOne(dir + "/libespalier-e-init.so", abi: Self.abi)
        XCTAssertFalse(r.ok)
        XCTAssertEqual(r.reason, "init failed (invalid argument): the fixture's licence file is missing")
        let good = try scanner(cache: cache).scanOne(PluginFixtures.builtPluginDir + "/libespalier-gates.so", abi: Self.abi)
        XCTAssertTrue(good.ok, good.reason ?? "")
        XCTAssertTrue(good.components.contains("espalier.gate.softmax/1"), "\(good.components)")
    }

    func testCommands_SurviveAHostileFolder() throws {
        let (dir, expected) = try hostileFolder()
        let cache = try PluginFixtures.tempDir("scan-cache") + "/scan.json"
        for args in [["plugins", "--plugin-dir", dir],
                     ["plugins", "describe", "espalier.gate.softmax/1", "--plugin-dir", dir],
                     ["search", "--dry-run", "--dataset", "synthetic", "--channels", "4", "--cells", "2", "--plugin-dir", dir]] {
            let t0 = Date()
            let (status, out) = try EspalierProcess.run(args, cwd: NSTemporaryDirectory(),
                                                        environment: ["ESPALIER_SCAN_TIMEOUT": String(Self.timeout), "ESPALIER_SCAN_CACHE": cache])
            XCTAssertEqual(status, 0, "\(args): \(out)")
            XCTAssertLessThan(Date().timeIntervalSince(t0), Self.timeout + 10, "\(args)")
            if args[0] == "plugins" && args.count == 3 {
                XCTAssertTrue(out.contains("espalier.strategy.darts/1") && out.contains("org.good.gate.linear/1"), out)
                for path in expected.keys { XCTAssertTrue(out.contains(path), "\(path) named in: \(out)") }
                XCTAssertTrue(out.contains("SIGSEGV") && out.contains("SIGABRT") && out.contains("did not finish within"), out)
            }
            if args[0] == "search" { XCTAssertTrue(out.contains("predicted peak of the search"), out) }
        }
    }
}
