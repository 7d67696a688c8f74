// Methods by name through the `espalier` executable (issue 17): for every seed method,
// `--method NAME` resolves to exactly the components and settings that bench/methods.sh (and, for
// Bonsai-Net, its plugin's description) spelled out with explicit flags before `--method` existed;
// an explicit flag overrides one default; short names; "did you mean" on a typo; `--add-op`; the
// METHODS table of `espalier plugins`; and the search's own path (`espalier memory`).

import EspalierSearch
import EspalierTestSupport
import Foundation
import XCTest

final class MethodsByNameTests: TemporaryDirectoryTestCase {
    /// Each seed method as bench/methods.sh spelled it out with explicit flags (the setup's
    /// variable parts — P-DARTS's stage_cells, GSparsity's μ, FiGS's λ — left out), and Bonsai-Net
    /// as its plugin's description does, in its paper's hyper-connected space.
    static let spelledOut: [(method: String, flags: [String])] = [
        ("darts", ["--strategy", "espalier.strategy.darts/1"]),
        ("pcdarts", ["--strategy", "espalier.strategy.pcdarts/1"]),
        ("gdas", ["--strategy", "espalier.strategy.gdas/1", "--gate", "espalier.gate.gdas/1"]),
        ("proxyless", ["--strategy", "espalier.strategy.proxyless/1", "--gate", "espalier.gate.binary/1", "--regularizer", "espalier.regularizer.expected-cost/1"]),
        ("pdarts", ["--strategy", "espalier.strategy.pdarts/1"]),
        ("dropnas", ["--strategy", "espalier.strategy.dropnas/1"]),
        ("mergenas", ["--strategy", "espalier.strategy.darts/1", "--merged-op", "espalier.op.mergenas_conv/1"]),
        ("parsec", ["--strategy", "espalier.strategy.parsec/1"]),
        ("betadarts", ["--strategy", "espalier.strategy.darts/1", "--regularizer", "espalier.regularizer.beta-decay/1"]),
        ("random", ["--strategy", "espalier.strategy.random/1"]),
        ("etenas", ["--strategy", "espalier.strategy.etenas/1"]),
        ("zero-one-shot", ["--strategy", "espalier.strategy.zero-one-shot/1", "--set", "strategy.partial_channels=4",
                           "--regularizer", "espalier.regularizer.beta-decay/1"]),
        ("gsparsity", ["--strategy", "espalier.strategy.gsparsity/1", "--set", "strategy.threshold=1e-3",
                       "--regularizer", "espalier.regularizer.proxsgd/1", "--set", "proxsgd.lr=0.05"]),
        ("figs", ["--strategy", "espalier.strategy.figs/1", "--channel-gate", "espalier.gate.figs/1", "--regularizer", "espalier.regularizer.figs-cost/1",
                  "--set", "figs-cost.cost=params", "--op", "espalier.op.figs_sep_conv_3x3/1", "--op", "espalier.op.figs_sep_conv_5x5/1",
                  "--op", "espalier.op.figs_dil_conv_3x3/1", "--op", "espalier.op.figs_dil_conv_5x5/1"]),
        ("bonsai", ["--strategy", "espalier.strategy.bonsai/1", "--gate", "espalier.gate.sawwave/1", "--regularizer", "espalier.regularizer.compression/1",
                    "--set", "strategy.hyper_connected=true"]),
    ]

    func espalier(_ args: [String]) throws -> (status: Int32, output: String) {
        _ = try Prerequisite.espalierBinary()
        return try EspalierProcess.run(args, cwd: dir, environment: ["ESPALIER_SCAN": "in-process"])
    }

    /// `plugins check` output without the method's own line.
    func check(_ args: [String]) throws -> [String] {
        let r = try espalier(["plugins", "check"] + args)
        XCTAssertEqual(r.status, 0, "\(args): \(r.output)")
        return r.output.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("--method ") && !$0.hasPrefix("warning:") }
    }

    func testEverySeedMethod_ResolvesToWhatBenchMethodsSpelledOut() throws {
        for (method, flags) in Self.spelledOut {
            let byName = try check(["--method", method])
            XCTAssertEqual(byName, try check(flags), method)
            XCTAssertTrue(byName.contains { $0.hasPrefix("strategy ") }, "\(method): \(byName)")
        }
        // A few of them line by line, so that a change to both spellings at once is seen too.
        let gdas = try check(["--method", "gdas"]).joined(separator: "\n")
        XCTAssertTrue(gdas.contains("strategy    espalier.strategy.gdas/1") && gdas.contains("gate        espalier.gate.gdas/1"), gdas)
        let gs = try check(["--method", "gsparsity"]).joined(separator: "\n")
        XCTAssertTrue(gs.contains("threshold=1e-3") && gs.contains("regularizer espalier.regularizer.proxsgd/1") && gs.contains("lr=0.05"), gs)
        let figs = try check(["--method", "figs"])
        XCTAssertEqual(figs.filter { $0.hasPrefix("op ") }.count, 4, "\(figs)")
        XCTAssertTrue(figs.contains("channel     espalier.gate.figs/1"), "\(figs)")
        let merged = try check(["--method", "mergenas"])
        XCTAssertTrue(merged.contains { $0.hasPrefix("merged-op   espalier.op.mergenas_conv/1") }, "\(merged)")
    }

    /// bench/methods.sh's lines before `--method` (CELLS=5), by the bench's method names.
    static let benchBefore: [(String, String)] = [
        ("darts", "--strategy espalier.strategy.darts/1"),
        ("pcdarts", "--strategy espalier.strategy.pcdarts/1"),
        ("gdas", "--strategy espalier.strategy.gdas/1 --gate espalier.gate.gdas/1"),
        ("proxyless", "--strategy espalier.strategy.proxyless/1 --gate espalier.gate.binary/1 --regularizer espalier.regularizer.expected-cost/1"),
        ("pdarts", "--strategy espalier.strategy.pdarts/1 --set strategy.stage_cells=3,4,5"),
        ("dropnas", "--strategy espalier.strategy.dropnas/1"),
        ("mergenas", "--strategy espalier.strategy.darts/1 --merged-op espalier.op.mergenas_conv/1"),
        ("parsec", "--strategy espalier.strategy.parsec/1"),
        ("betadarts", "--strategy espalier.strategy.darts/1 --regularizer espalier.regularizer.beta-decay/1"),
        ("random", "--strategy espalier.strategy.random/1"),
        ("etenas", "--strategy espalier.strategy.etenas/1"),
        ("darts-rnd", "--strategy espalier.strategy.zero-one-shot/1 --set strategy.mode=random"),
        ("zero-one-shot", "--strategy espalier.strategy.zero-one-shot/1 --set strategy.partial_channels=4 --regularizer espalier.regularizer.beta-decay/1"),
        ("zos-rnd", "--strategy espalier.strategy.zero-one-shot/1 --set strategy.mode=random --set strategy.partial_channels=4 --regularizer espalier.regularizer.beta-decay/1"),
        ("gsparsity-mu10", "--strategy espalier.strategy.gsparsity/1 --regularizer espalier.regularizer.proxsgd/1 --set proxsgd.lr=0.05 --set proxsgd.mu=10"),
        ("gsparsity-mu20", "--strategy espalier.strategy.gsparsity/1 --set strategy.threshold=1e-3 --regularizer espalier.regularizer.proxsgd/1 --set proxsgd.lr=0.05 --set proxsgd.mu=20"),
        ("gsparsity-mu20-lr0.1", "--strategy espalier.strategy.gsparsity/1 --set strategy.threshold=1e-3 --regularizer espalier.regularizer.proxsgd/1 --set proxsgd.lr=0.1 --set proxsgd.mu=20"),
        ("figs-lam0.01", "--strategy espalier.strategy.figs/1 --channel-gate espalier.gate.figs/1 --regularizer espalier.regularizer.figs-cost/1 --set figs-cost.cost=params --set figs-cost.lambda=0.01 --op espalier.op.figs_sep_conv_3x3/1 --op espalier.op.figs_sep_conv_5x5/1 --op espalier.op.figs_dil_conv_3x3/1 --op espalier.op.figs_dil_conv_5x5/1"),
    ]

    func testBenchMethodsLines_ResolveAsTheirExplicitSpellingsDid() throws {
        let script = PluginFixtures.repoRoot.appendingPathComponent("bench/methods.sh").path
        for (name, before) in Self.benchBefore {
            let (status, now) = try PluginFixtures.run(["bash", "-c", "CELLS=5; eval \"$(sed -n '/^args_for() {/,/^}/p' \"$0\")\"; args_for \"$1\"", script, name])
            XCTAssertEqual(status, 0, "\(name): \(now)")
            let args = now.split(whereSeparator: \.isWhitespace).map(String.init)
            XCTAssertTrue(args.contains("--method") || name.hasSuffix("-rnd"), "\(name) uses --method: \(now)")
            // The results differ only in how a value was written (1e-6 given, or the default 1e-06).
            func normalized(_ lines: [String]) -> [String] { lines.map { $0.replacingOccurrences(of: "threshold=1e-06", with: "threshold=1e-6") } }
            XCTAssertEqual(normalized(try check(args)), normalized(try check(before.split(separator: " ").map(String.init))), name)
        }
    }

    func testExplicitFlagsOverrideTheMethodsDefaults() throws {
        // --set wins over the method's setting; the others stay.
        let lr = try check(["--method", "gsparsity", "--set", "proxsgd.lr=0.1"]).joined(separator: "\n")
        XCTAssertTrue(lr.contains("lr=0.1") && !lr.contains("lr=0.05") && lr.contains("threshold=1e-3"), lr)
        // --regularizer replaces the method's regularizers (and drops their settings).
        let regs = try check(["--method", "proxyless", "--regularizer", "espalier.regularizer.beta-decay/1"])
        XCTAssertTrue(regs.contains { $0.hasPrefix("regularizer espalier.regularizer.beta-decay/1") }, "\(regs)")
        XCTAssertFalse(regs.contains { $0.contains("expected-cost") }, "\(regs)")
        XCTAssertTrue(regs.contains { $0.hasPrefix("gate        espalier.gate.binary/1") }, "the gate stays the method's: \(regs)")
        // --gate and --strategy replace the method's; the strategy's settings go with it.
        let gate = try check(["--method", "gdas", "--gate", "espalier.gate.softmax/1"])
        XCTAssertTrue(gate.contains { $0.hasPrefix("gate        espalier.gate.softmax/1") }, "\(gate)")
        let strategy = try check(["--method", "zero-one-shot", "--strategy", "espalier.strategy.darts/1"]).joined(separator: "\n")
        XCTAssertTrue(strategy.contains("strategy    espalier.strategy.darts/1") && !strategy.contains("partial_channels=4")
                      && strategy.contains("espalier.regularizer.beta-decay/1"), strategy)
        // --op replaces the method's ops.
        let ops = try check(["--method", "figs", "--op", "espalier.op.figs_sep_conv_3x3/1"])
        XCTAssertEqual(ops.filter { $0.hasPrefix("op ") }.count, 1, "\(ops)")
    }

    func testShortNamesAndTypos() throws {
        XCTAssertEqual(try check(["--strategy", "gdas", "--gate", "gdas", "--regularizer", "beta-decay", "--op", "sep_conv_3x3"]),
                       try check(["--strategy", "espalier.strategy.gdas/1", "--gate", "espalier.gate.gdas/1",
                                  "--regularizer", "espalier.regularizer.beta-decay/1", "--op", "espalier.op.sep_conv_3x3/1"]))
        let typo = try espalier(["plugins", "check", "--strategy", "gdsa"])
        XCTAssertNotEqual(typo.status, 0)
        XCTAssertTrue(typo.output.contains("unknown strategy 'gdsa'; did you mean 'gdas' (espalier.strategy.gdas/1)?"), typo.output)
        let method = try espalier(["plugins", "check", "--method", "betadrats"])
        XCTAssertNotEqual(method.status, 0)
        XCTAssertTrue(method.output.contains("unknown method 'betadrats'; did you mean 'betadarts'?"), method.output)
        let op = try espalier(["search", "--dry-run", "--dataset", "synthetic", "--op", "sep_conv_3x5"])
        XCTAssertNotEqual(op.status, 0)
        XCTAssertTrue(op.output.contains("did you mean 'sep_conv_3x3' (espalier.op.sep_conv_3x3/1)?")
                      || op.output.contains("did you mean 'sep_conv_5x5' (espalier.op.sep_conv_5x5/1)?"), op.output)
    }

    func testAmbiguousShortName_IsRefusedNamingTheCandidates() throws {
        let plugins = path("plugins")
        try FileManager.default.createDirectory(atPath: plugins, withIntermediateDirectories: true)
        try PluginFixtures.build("libespalier-a.so", in: plugins, defines: ["FIX_ID=\"org.a\""])
        try PluginFixtures.build("libespalier-b.so", in: plugins, defines: ["FIX_ID=\"org.b\""])
        let r = try espalier(["plugins", "check", "--plugin-dir", plugins, "--regularizer", "l2"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.output.contains("'l2' is ambiguous: 2 regularizers are called that (org.a.regularizer.l2/1, org.b.regularizer.l2/1); give the full id"),
                      r.output)
        XCTAssertEqual(try check(["--plugin-dir", plugins, "--regularizer", "org.b.regularizer.l2"]).first { $0.hasPrefix("regularizer") }?
                           .hasPrefix("regularizer org.b.regularizer.l2/1"), true)
    }

    func testAddOp_AddsToTheDefaultEight_OpReplacesThem() throws {
        let added = try check(["--add-op", "espalier.op.figs_sep_conv_3x3/1"]).filter { $0.hasPrefix("op ") }
        XCTAssertEqual(added.count, 9, "\(added)")
        XCTAssertTrue(added.last?.hasPrefix("op          espalier.op.figs_sep_conv_3x3/1") ?? false, "\(added)")
        let onMethod = try check(["--method", "figs", "--add-op", "skip_connect"]).filter { $0.hasPrefix("op ") }
        XCTAssertEqual(onMethod.count, 5, "\(onMethod)")
        // In a search (`espalier memory` resolves as `search` does): the default eight plus one.
        let memory = try espalier(["memory", "--channels", "4", "--cells", "3", "--batch-size", "4", "--add-op", "figs_sep_conv_3x3", "--channel-gate", "figs"])
        XCTAssertEqual(memory.status, 0, memory.output)
        let line = try XCTUnwrap(memory.output.split(separator: "\n").first { $0.hasPrefix("selection: ") }, memory.output)
        XCTAssertTrue(line.contains("espalier.op.dil_conv_5x5/1 espalier.op.figs_sep_conv_3x3/1"), String(line))
        XCTAssertTrue(memory.output.contains("9 ops/edge"), memory.output)
        let replaced = try espalier(["memory", "--channels", "4", "--cells", "3", "--batch-size", "4", "--op", "sep_conv_3x3", "--op", "none"])
        XCTAssertTrue(replaced.output.contains("2 ops/edge"), replaced.output)
    }

    func testSearchPath_UsesTheMethod_WithFlagsOverIt() throws {
        let gdas = try espalier(["memory", "--method", "gdas", "--channels", "4", "--cells", "3", "--batch-size", "4"])
        XCTAssertEqual(gdas.status, 0, gdas.output)
        XCTAssertTrue(gdas.output.contains("selection: method gdas; strategy espalier.strategy.gdas/1; gate espalier.gate.gdas/1; ops espalier.op.none/1 "), gdas.output)
        let beta = try espalier(["memory", "--method", "betadarts", "--set", "beta-decay.lambda=3", "--channels", "4", "--cells", "3", "--batch-size", "4"])
        XCTAssertEqual(beta.status, 0, beta.output)
        XCTAssertTrue(beta.output.contains("; regularizers espalier.regularizer.beta-decay/1 {lambda=3}"), beta.output)
        XCTAssertTrue(beta.output.contains("selection: method betadarts; strategy espalier.strategy.darts/1;"), beta.output)
        let merged = try espalier(["memory", "--method", "mergenas", "--channels", "4", "--cells", "3", "--batch-size", "4"])
        XCTAssertEqual(merged.status, 0, merged.output)
        XCTAssertTrue(merged.output.contains("; merged ops espalier.op.mergenas_conv/1"), merged.output)
    }

    func testSearch_RecordsTheMethodInConfigJSON() throws {
        let dir = NSTemporaryDirectory() + "espalier-method-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (args, method) in [(["--method", "gdas"], "gdas"), (["--strategy", "darts"], nil as String?)] {
            let out = dir + "/" + (method ?? "none")
            let r = try espalier(["search", "--dataset", "synthetic", "--train-images", "32", "--eval-images", "16", "--channels", "4", "--cells", "2",
                                  "--nodes", "2", "--batch-size", "8", "--epochs", "1", "--no-supervise", "--out", out] + args)
            XCTAssertEqual(r.status, 0, r.output)
            let config = try JSONDecoder().decode(SearchConfig.self, from: Data(contentsOf: URL(fileURLWithPath: out + "/config.json")))
            XCTAssertEqual(config.method, method, "--method is recorded with the run")
        }
    }

    func testPluginsListsAMethodsTable() throws {
        let r = try espalier(["plugins"])
        XCTAssertEqual(r.status, 0, r.output)
        let lines = r.output.split(separator: "\n").map(String.init)
        let start = try XCTUnwrap(lines.firstIndex { $0.hasPrefix("METHODS") }, r.output)
        let rows = lines[(start + 2)...].prefix { !$0.isEmpty && !$0.hasPrefix("failed") }
        XCTAssertEqual(Set(rows.map { String($0.split(separator: " ")[0]) }), Set(Self.spelledOut.map(\.method)))
        let gdas = try XCTUnwrap(rows.first { $0.hasPrefix("gdas ") })
        XCTAssertTrue(gdas.contains("strategy gdas, gate gdas") && gdas.contains("GDAS"), gdas)
        let describe = try espalier(["plugins", "describe", "beta-decay"])
        XCTAssertTrue(describe.output.contains("brings the method 'betadarts' (--method betadarts): strategy darts, regularizer beta-decay"), describe.output)
    }
}
