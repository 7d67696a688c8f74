// `espalier compare`: Student's t quantiles against published tables, the summaries and the paired
// comparison against a hand computation, the report's four formats, and the harness end to end on
// a tiny grid (darts and random search × 2 seeds on synthetic data): every cell finished, the
// report's statistics recomputed by hand from the cells, a deleted cell redone alone and bit for
// bit, one cell run alone (--cell), Ctrl-C stopping the grid and a rerun resuming the cell's
// search from its checkpoint to the same result, a killed grid leaving no search behind, a changed protocol refused, a foreign folder left untouched, and the same grid on two MPI
// ranks giving every cell the same result.

import EspalierCore
import EspalierSearch
import EspalierTestSupport
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import XCTest

final class CompareStatisticsTests: XCTestCase {
    func testStudentTQuantiles_MatchPublishedTables() {
        // t(0.975, df) from the standard tables (e.g. NIST/SEMATECH e-Handbook, Table 1.3.6.7.2).
        let table: [(Double, Double)] = [(1, 12.706204736), (2, 4.302652730), (3, 3.182446305), (4, 2.776445105),
                                         (9, 2.262157163), (10, 2.228138852), (30, 2.042272456), (100, 1.983971519)]
        for (df, t) in table {
            XCTAssertEqual(StudentT.quantile(0.975, df: df), t, accuracy: 1e-7, "df \(df)")
            XCTAssertEqual(StudentT.cdf(t, df: df), 0.975, accuracy: 1e-10, "df \(df)")
        }
        XCTAssertEqual(StudentT.quantile(0.95, df: 5), 2.015048373, accuracy: 1e-7)
        XCTAssertEqual(StudentT.quantile(0.025, df: 4), -2.776445105, accuracy: 1e-7, "symmetric")
        XCTAssertEqual(StudentT.cdf(0, df: 3), 0.5, accuracy: 1e-15)
        XCTAssertEqual(StudentT.quantile(0.975, df: 1e7), 1.959963985, accuracy: 1e-6, "the normal limit")
    }

    func testSampleSummary_MatchesHandComputation() {
        let s = SampleSummary([84.0, 85.0, 86.5])
        XCTAssertEqual(s.n, 3)
        XCTAssertEqual(s.mean!, 255.5 / 3, accuracy: 1e-12)
        // Σ(x − x̄)² = 1.36111… + 0.02777… + 1.77777… = 3.1666…; sd = √(3.1666…/2)
        XCTAssertEqual(s.sd!, (19.0 / 12).squareRoot(), accuracy: 1e-12)
        let half = 4.302652730 * (19.0 / 12).squareRoot() / 3.0.squareRoot()
        XCTAssertEqual(s.low!, 255.5 / 3 - half, accuracy: 1e-7)
        XCTAssertEqual(s.high!, 255.5 / 3 + half, accuracy: 1e-7)
        let one = SampleSummary([84.2])
        XCTAssertEqual(one.mean, 84.2)
        XCTAssertNil(one.sd); XCTAssertNil(one.low)
        XCTAssertNil(SampleSummary([]).mean)
    }

    func testPairedComparison_UsesSeedsBothFinished_AndSaysWhatItsIntervalSays() {
        let random: [UInt64: Double] = [1: 84.0, 2: 84.5, 3: 85.0, 4: 90.0]
        let better = PairedComparison(method: [1: 85.0, 2: 85.6, 3: 85.9], random: random)
        XCTAssertEqual(better.seeds, [1, 2, 3], "seed 4 has no method result: not paired")
        XCTAssertEqual(better.differences[0], 1.0, accuracy: 1e-12)
        XCTAssertEqual(better.differences[1], 1.1, accuracy: 1e-12)
        XCTAssertEqual(better.differences[2], 0.9, accuracy: 1e-12)
        // mean 1.0, sd 0.1, half-width t(0.975, 2)·0.1/√3
        XCTAssertEqual(better.summary.mean!, 1.0, accuracy: 1e-12)
        XCTAssertEqual(better.summary.low!, 1.0 - 4.302652730 * 0.1 / 3.0.squareRoot(), accuracy: 1e-7)
        XCTAssertEqual(better.verdict, "beats random")
        XCTAssertEqual(PairedComparison(method: [1: 83.0, 2: 83.4, 3: 84.1], random: random).verdict, "worse")
        XCTAssertEqual(PairedComparison(method: [1: 85.0, 2: 84.0, 3: 85.5], random: random).verdict, "level")
        XCTAssertEqual(PairedComparison(method: [1: 85.0], random: random).verdict, "too few seeds")
    }

    func result(_ method: String, _ seed: UInt64, _ accuracy: Double?, seconds: Double = 10) -> CellResult {
        var r = CellResult(method: method, seed: seed, status: accuracy == nil ? "failed" : "ok")
        if let accuracy {
            r.testAccuracy = accuracy; r.testImages = 100; r.searchSeconds = seconds; r.searchPeakBytes = 64 << 20
            r.searchPeakResidentBytes = 128 << 20; r.parameters = 1000; r.forwardFlops = 2_000_000
        } else {
            r.failure = "the search exited with status 1"
        }
        return r
    }

    func testReport_FourFormats_CarryTheSameFigures() throws {
        let file = ComparisonFile(comparison: ComparisonProtocol(), grid: ComparisonGrid(methods: ["darts", "random"], seeds: [1, 2, 3]))
        let results = [result("darts", 1, 0.85), result("darts", 2, 0.86), result("darts", 3, nil),
                       result("random", 1, 0.84, seconds: 20), result("random", 2, 0.845, seconds: 30)]
        let report = ComparisonReport(file: file, results: results)
        let darts = try XCTUnwrap(report.rows.first { $0.method == "darts" })
        XCTAssertEqual(darts.accuracy.n, 2)
        XCTAssertEqual(darts.accuracy.mean!, 85.5, accuracy: 1e-9)
        XCTAssertEqual(darts.failedSeeds, [3])
        XCTAssertEqual(darts.pairedToRandom?.differences.count, 2)
        XCTAssertEqual(darts.pairedToRandom!.summary.mean!, 1.25, accuracy: 1e-9)   // (1.0 + 1.5) / 2
        XCTAssertEqual(darts.searchPeakMib!, 64, accuracy: 1e-9)
        let random = try XCTUnwrap(report.rows.first { $0.method == "random" })
        XCTAssertEqual(random.missingSeeds, [3])
        XCTAssertEqual(random.searchSeconds.mean!, 25, accuracy: 1e-9)
        XCTAssertNil(random.pairedToRandom)

        let md = report.markdown
        XCTAssertTrue(md.hasPrefix("# Comparison: 2 methods × 3 seeds\n"), md)
        XCTAssertEqual(ComparisonGrid(methods: ["dropnas"], seeds: [1]).sizeDescription, "1 method × 1 seed")
        XCTAssertTrue(md.contains("| darts | 85.00 | 86.00 | failed | 85.50 ± 0.71 |"), md)
        XCTAssertTrue(md.contains("Not run yet: random seed 3"), md)
        // random 25 s against darts's 10 s (the only other method: the median is 10 s)
        XCTAssertTrue(md.contains("Budget: random search (strategy.samples_per_epoch=6 strategy.child_steps=100) searched 25 s on average, 2.50× the median"), md)
        XCTAssertTrue(md.contains("Failed (their cell.json says why; a rerun redoes them): darts seed 3"), md)
        let csv = report.csv.split(separator: "\n")
        XCTAssertEqual(csv.count, 3)
        XCTAssertTrue(csv[1].hasPrefix("darts,2,85.5000,0.7071,"), String(csv[1]))
        let decoded = try SnakeCaseJSON.decode(ComparisonReport.self, from: try report.json())
        XCTAssertEqual(decoded.rows.count, 2)
        XCTAssertEqual(decoded, report, "report.json holds the whole report")
        let svg = try XMLDocument(data: Data(report.svg.utf8))
        XCTAssertEqual(svg.rootElement()?.name, "svg")
        XCTAssertTrue(report.svg.contains(">darts</text>") && report.svg.contains(">random</text>"), report.svg)
    }

    func testProtocol_CellCommands_AndDifferences() {
        var p = ComparisonProtocol()
        p.cells = 4
        let search = p.searchArguments(method: "pdarts", seed: 7, out: "/x/search")
        XCTAssertEqual(Array(search.prefix(5)), ["search", "--method", "pdarts", "--set", "strategy.stage_cells=3,4,4"])
        XCTAssertTrue(search.joined(separator: " ").contains("--seed 7"))
        XCTAssertTrue(search.joined(separator: " ").hasSuffix("--out /x/search"))
        let train = p.evaluationArguments(.genotype(path: "/x/g.json", perCell: false), seed: 7, out: "/x/train").joined(separator: " ")
        XCTAssertTrue(train.hasPrefix("train --genotype /x/g.json --channels 8 --cells 4"), train)
        XCTAssertTrue(train.contains("--seed 7") && train.contains("--epochs \(p.evalEpochs)"), train)
        XCTAssertFalse(p.evaluationArguments(.genotype(path: "/g", perCell: true), seed: 1, out: "/t").contains("--cells"), "FiGS's genotype sets its depth")
        XCTAssertEqual(p.evaluationArguments(.pruned(path: "/p.json"), seed: 1, out: "/t").first, "train-pruned")
        var q = p
        q.searchEpochs = 9
        XCTAssertEqual(q.differences(from: p), ["search_epochs: 9 asked, 3 in the folder"])
        XCTAssertEqual(p.differences(from: p), [])
    }
}

final class CompareCLITests: XCTestCase {
    /// A tiny grid: darts (and random search, added by the harness) × 2 seeds on synthetic data.
    static let protocolFlags = ["--methods", "darts", "--seeds", "2", "--dataset", "synthetic", "--channels", "4", "--cells", "3",
                                "--search-images", "128", "--search-batch-size", "16", "--search-epochs", "1",
                                "--method-set", "random:strategy.samples_per_epoch=2", "--method-set", "random:strategy.child_steps=3",
                                "--eval-epochs", "1", "--eval-images", "64", "--eval-batch-size", "16", "--test-images", "48"]

    func cellFile(_ dir: String, _ method: String, _ seed: Int) -> String { "\(dir)/cells/\(method)/seed-\(seed)/cell.json" }

    func testTinyGrid_EndToEnd_ResumesADeletedCell_AndRefusesAnotherProtocol() throws {
        _ = try Prerequisite.espalierBinary()
        let base = try PluginFixtures.tempDir("compare")
        let dir = base + "/grid"
        let first = try EspalierProcess.run(["compare", "--out", dir] + Self.protocolFlags, cwd: base, timeout: 600)
        XCTAssertEqual(first.status, 0, first.output)
        XCTAssertTrue(first.output.contains("2 methods × 2 seeds; 4 cell(s) to run"), first.output)
        var results: [String: CellResult] = [:]
        for m in ["darts", "random"] {
            for s in [1, 2] {
                let r = try CellResult.decode(Data(contentsOf: URL(fileURLWithPath: cellFile(dir, m, s))))
                XCTAssertTrue(r.ok, "\(m) \(s): \(r.failure ?? "")")
                XCTAssertNotNil(r.testAccuracy); XCTAssertEqual(r.testImages, 48)
                XCTAssertGreaterThan(r.searchPeakBytes ?? 0, 0); XCTAssertGreaterThan(r.parameters ?? 0, 0); XCTAssertGreaterThan(r.forwardFlops ?? 0, 0)
                results["\(m)\(s)"] = r
            }
        }
        // The report against a hand computation from the cells.
        let report = try SnakeCaseJSON.decode(ComparisonReport.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/report.json")))
        let d = [results["darts1"]!.testAccuracy! * 100, results["darts2"]!.testAccuracy! * 100]
        let r = [results["random1"]!.testAccuracy! * 100, results["random2"]!.testAccuracy! * 100]
        let darts = try XCTUnwrap(report.rows.first { $0.method == "darts" })
        XCTAssertEqual(darts.accuracy.mean!, (d[0] + d[1]) / 2, accuracy: 1e-9)
        XCTAssertEqual(darts.accuracy.sd!, abs(d[0] - d[1]) / 2.0.squareRoot(), accuracy: 1e-9)
        XCTAssertEqual(darts.accuracy.high! - darts.accuracy.mean!, 12.706204736 * abs(d[0] - d[1]) / 2.0.squareRoot() / 2.0.squareRoot(), accuracy: 1e-6)
        let diffs = [d[0] - r[0], d[1] - r[1]]
        XCTAssertEqual(darts.pairedToRandom!.summary.mean!, (diffs[0] + diffs[1]) / 2, accuracy: 1e-9)
        XCTAssertEqual(darts.pairedToRandom!.summary.sd!, abs(diffs[0] - diffs[1]) / 2.0.squareRoot(), accuracy: 1e-9)
        for name in ["report.md", "report.csv", "report.svg"] { XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/" + name), name) }

        // One cell deleted: a rerun runs it alone, and gets the same result (same seed, same protocol).
        let kept = try Data(contentsOf: URL(fileURLWithPath: cellFile(dir, "random", 1)))
        try FileManager.default.removeItem(atPath: dir + "/cells/darts/seed-2")
        let again = try EspalierProcess.run(["compare", "--out", dir] + Self.protocolFlags, cwd: base, timeout: 600)
        XCTAssertEqual(again.status, 0, again.output)
        XCTAssertTrue(again.output.contains("1 cell(s) to run"), again.output)
        XCTAssertTrue(again.output.contains("darts seed 2"), again.output)
        XCTAssertFalse(again.output.contains("random seed 1: searching"), again.output)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: cellFile(dir, "random", 1))), kept, "a finished cell is not touched")
        let redone = try CellResult.decode(Data(contentsOf: URL(fileURLWithPath: cellFile(dir, "darts", 2))))
        XCTAssertEqual(redone.testAccuracy, results["darts2"]!.testAccuracy, "the redone cell repeats its result bit for bit")
        XCTAssertEqual(redone.parameters, results["darts2"]!.parameters)

        // One cell alone (--cell): only it runs; the report lists what is still missing.
        try FileManager.default.removeItem(atPath: dir + "/cells/darts/seed-1")
        try FileManager.default.removeItem(atPath: dir + "/cells/random/seed-2")
        let alone = try EspalierProcess.run(["compare", "--out", dir, "--cell", "random:2"], cwd: base, timeout: 600)
        XCTAssertEqual(alone.status, 0, alone.output)
        XCTAssertTrue(alone.output.contains("1 cell(s) to run") && alone.output.contains("random seed 2: test accuracy"), alone.output)
        XCTAssertTrue(alone.output.contains("Not run yet: darts seed 1."), alone.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: cellFile(dir, "darts", 1)))
        let outside = try EspalierProcess.run(["compare", "--out", dir, "--cell", "gdas:1"], cwd: base, timeout: 120)
        XCTAssertNotEqual(outside.status, 0)
        XCTAssertTrue(outside.output.contains("--cell gdas:1 is not in this comparison's grid (methods darts, random; seeds 1, 2)"), outside.output)

        // Without the flags it continues the stored grid; a changed protocol is refused by name.
        let stored = try EspalierProcess.run(["compare", "--out", dir], cwd: base, timeout: 600)
        XCTAssertEqual(stored.status, 0, stored.output)
        XCTAssertTrue(stored.output.contains("2 methods × 2 seeds; 1 cell(s) to run"), stored.output)
        XCTAssertEqual(try CellResult.decode(Data(contentsOf: URL(fileURLWithPath: cellFile(dir, "darts", 1)))).testAccuracy,
                       results["darts1"]!.testAccuracy)
        let changed = try EspalierProcess.run(["compare", "--out", dir, "--search-epochs", "2"], cwd: base, timeout: 120)
        XCTAssertNotEqual(changed.status, 0)
        XCTAssertTrue(changed.output.contains("search_epochs: 2 asked, 1 in the folder"), changed.output)

        // A folder that is not a comparison's is refused and left as it was.
        let foreign = base + "/foreign"
        try FileManager.default.createDirectory(atPath: foreign, withIntermediateDirectories: true)
        try Data("mine".utf8).write(to: URL(fileURLWithPath: foreign + "/notes.txt"))
        let refused = try EspalierProcess.run(["compare", "--out", foreign] + Self.protocolFlags, cwd: base, timeout: 120)
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.output.contains("is not a comparison's folder"), refused.output)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: foreign), ["notes.txt"])

        // An unknown method is named with the nearest one, before anything runs.
        let unknown = try EspalierProcess.run(["compare", "--out", base + "/unknown", "--methods", "drats"], cwd: base, timeout: 120)
        XCTAssertNotEqual(unknown.status, 0)
        XCTAssertTrue(unknown.output.contains("did you mean 'darts'"), unknown.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: base + "/unknown/protocol.json"))
        let misspelt = try EspalierProcess.run(["compare", "--out", base + "/unknown", "--methods", "darts", "--method-set", "pdart:strategy.stage_cells=3,4"],
                                               cwd: base, timeout: 120)
        XCTAssertNotEqual(misspelt.status, 0)
        XCTAssertTrue(misspelt.output.contains("unknown method 'pdart'; did you mean 'pdarts'"), misspelt.output)
        let budget = try EspalierProcess.run(["compare", "--out", base + "/unknown", "--search-memory-budget", "lots"], cwd: base, timeout: 120)
        XCTAssertNotEqual(budget.status, 0)
        XCTAssertTrue(budget.output.contains("--search-memory-budget 'lots' is not a size"), budget.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: base + "/unknown"), "nothing is created for a refused command")

        // The same grid with its cells spread over two MPI ranks: every cell's result is the same.
        let spread = base + "/spread"
        let mpi = try MPIRun.run(ranks: 2, ["compare", "--out", spread] + Self.protocolFlags, cwd: base, timeout: 600)
        XCTAssertEqual(mpi.status, 0, mpi.output)
        XCTAssertTrue(mpi.output.contains("4 cell(s) to run on 2 ranks"), mpi.output)
        for (key, one) in results {
            let m = key.hasPrefix("darts") ? "darts" : "random", s = Int(String(key.last!))!
            let other = try CellResult.decode(Data(contentsOf: URL(fileURLWithPath: cellFile(spread, m, s))))
            XCTAssertEqual(other.testAccuracy, one.testAccuracy, "\(key) on two ranks")
            XCTAssertEqual(other.searchPeakBytes, one.searchPeakBytes, "\(key): the accountant's peak")
        }
    }

    /// The pids of processes whose command line contains `text`.
    func processes(containing text: String) -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { entry -> Int32? in
            guard let pid = Int32(entry), let cmd = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(entry)/cmdline")) else { return nil }
            return String(decoding: cmd.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(text) ? pid : nil
        }
    }

    func testKilledGrid_LeavesNoSearchRunning_AndARerunRedoesTheCell() throws {
        _ = try Prerequisite.espalierBinary()
        let base = try PluginFixtures.tempDir("compare-kill")
        let dir = base + "/grid"
        // Long enough a search that it is still running when the grid is killed.
        var flags = Self.protocolFlags
        flags[flags.firstIndex(of: "--search-epochs")! + 1] = "30"
        let grid = try EspalierProcess(["compare", "--out", dir] + flags, cwd: base)
        let deadline = Date().addingTimeInterval(120)
        var children: [Int32] = []
        while Date() < deadline && children.isEmpty {
            Thread.sleep(forTimeInterval: 0.2)
            if grid.output.contains("searching") { children = processes(containing: dir + "/cells/darts/seed-1/search") }
        }
        XCTAssertFalse(children.isEmpty, "the first cell's search runs: " + grid.output)
        kill(grid.process.processIdentifier, SIGKILL)
        grid.wait()
        // The search (and its supervised worker) end with the grid that started them.
        let gone = Date().addingTimeInterval(10)
        while Date() < gone && !processes(containing: dir + "/cells/darts/seed-1/search").isEmpty { Thread.sleep(forTimeInterval: 0.1) }
        XCTAssertEqual(processes(containing: dir + "/cells/darts/seed-1/search"), [], "no search outlives the grid")
        XCTAssertFalse(FileManager.default.fileExists(atPath: cellFile(dir, "darts", 1)), "a killed cell has no result")
        // The rerun (with the quick protocol's search epochs it was started with) starts that cell over.
        let listed = try EspalierProcess.run(["compare", "--out", dir, "--report-only"], cwd: base)
        XCTAssertEqual(listed.status, 0, listed.output)
        XCTAssertTrue(listed.output.contains("Not run yet: darts seed 1, darts seed 2, random seed 1, random seed 2"), listed.output)
    }

    func testCtrlC_StopsTheGrid_AndARerunResumesTheSearchFromItsCheckpoint() throws {
        _ = try Prerequisite.espalierBinary()
        let base = try PluginFixtures.tempDir("compare-interrupt")
        var flags = Self.protocolFlags
        flags[flags.firstIndex(of: "--search-epochs")! + 1] = "5"
        let only = ["--cell", "darts:1"]
        let dir = base + "/grid", cell = base + "/grid/cells/darts/seed-1"
        let grid = try EspalierProcess(["compare", "--out", dir] + flags + only, cwd: base)
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline && !FileManager.default.fileExists(atPath: cell + "/search/checkpoint.safetensors") { Thread.sleep(forTimeInterval: 0.05) }
        kill(grid.process.processIdentifier, SIGINT)   // as a terminal's Ctrl-C reaches it (the search runs in a group of its own)
        XCTAssertEqual(grid.wait(timeout: 120), 130, grid.output)
        XCTAssertTrue(grid.output.contains("darts seed 1: interrupted; a rerun continues it"), grid.output)
        let stopped = try CellResult.decode(Data(contentsOf: URL(fileURLWithPath: cell + "/cell.json")))
        XCTAssertEqual(stopped.status, "interrupted")
        XCTAssertFalse(FileManager.default.fileExists(atPath: cell + "/search/genotype.json"), "stopped before the search's end: " + grid.output)

        let again = try EspalierProcess.run(["compare", "--out", dir] + flags + only, cwd: base, timeout: 600)
        XCTAssertEqual(again.status, 0, again.output)
        XCTAssertTrue(again.output.contains("darts seed 1: resuming its search"), again.output)
        XCTAssertTrue(try String(contentsOfFile: cell + "/search.log", encoding: .utf8).contains("resuming"))
        let resumed = try CellResult.decode(Data(contentsOf: URL(fileURLWithPath: cell + "/cell.json")))
        XCTAssertTrue(resumed.ok, resumed.failure ?? "")
        XCTAssertGreaterThan(resumed.searchSeconds!, stopped.searchSeconds!, "the search time adds up its attempts")

        // The same cell never interrupted: the same genotype and accuracy, bit for bit.
        let whole = try EspalierProcess.run(["compare", "--out", base + "/whole"] + flags + only, cwd: base, timeout: 600)
        XCTAssertEqual(whole.status, 0, whole.output)
        XCTAssertEqual(try String(contentsOfFile: cell + "/search/genotype.json", encoding: .utf8),
                       try String(contentsOfFile: base + "/whole/cells/darts/seed-1/search/genotype.json", encoding: .utf8))
        let reference = try CellResult.decode(Data(contentsOf: URL(fileURLWithPath: base + "/whole/cells/darts/seed-1/cell.json")))
        XCTAssertEqual(resumed.testAccuracy, reference.testAccuracy)
    }
}

