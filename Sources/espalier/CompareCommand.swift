// `espalier compare`: every method against random search, over seeds, under one declared protocol
// (ComparisonProtocol). Each cell of the grid (a method at a seed) runs `espalier search --method M
// --seed S` and then trains what it found from scratch, as child processes of this executable, in
// OUT/cells/<method>/seed-<s>/ (search/, train/, search.log, train.log, cell.json). A rerun of the
// same command fills only the cells that are missing or failed; `--cell METHOD:SEED` runs one
// alone; under `mpirun -np N` the cells are spread over the ranks (cell k on rank k mod N; the
// children run without MPI, each with its share of the cores) and rank 0 gathers every rank's
// results and writes the report (ComparisonReport: report.md, .csv, .json, .svg).
// Ctrl-C (or SIGUSR1, which mpirun passes on): the running search checkpoints and stops, the grid
// stops, and a rerun continues that cell from its checkpoint.

import ArgumentParser
import EspalierCore
import EspalierHost
import EspalierSearch
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Ctrl-C presses seen while a cell's child runs (the child gets its own SIGINT from the terminal).
nonisolated(unsafe) var compareInterrupts: Int32 = 0

struct CompareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Run methods × seeds under one protocol, train each found network from scratch, and report every method against random search with confidence intervals.",
        discussion: """
            The protocol (search data, space, epochs and budget; the evaluation's training recipe and test set) is kept in \
            OUT/protocol.json: a rerun continues the same comparison (only missing or failed cells run) and refuses flags that \
            change the protocol. Under mpirun the cells are spread over the ranks. The report is OUT/report.md, .csv, .json and .svg.
            """)

    @OptionGroup var dirs: PluginDirOptions
    @Option(help: "The comparison's folder: a new or empty folder, or one an earlier `espalier compare` made (then it continues it).")
    var out: String
    @Option(help: "Methods, comma-separated (`espalier plugins` lists them; default: every method the plugins bring). Random search is added unless --no-random.")
    var methods: String?
    @Flag(help: "Leave random search out of the grid (the report then has no paired comparison).") var noRandom = false
    @Option(help: "Seeds: a count N (seeds 1…N) or a comma-separated list, e.g. 1,2,3 (default 3).") var seeds: String?
    @Option(name: .customLong("cell"), help: "Run only this cell, METHOD:SEED (repeatable), e.g. on a machine of its own; the report covers every finished cell.")
    var onlyCells: [String] = []
    @Flag(help: "Run nothing: write the report from the cells that have finished.") var reportOnly = false

    // The protocol (defaults: ComparisonProtocol's; given flags must match a folder's protocol).
    @Option(help: ArgumentHelp(datasetHelp)) var dataset: String?
    @Option(help: "Dataset folder (an .npz file for --dataset npz).") var dataDir: String?
    @Option(help: "Search: initial channels C (default 8).") var channels: Int?
    @Option(help: "Search and evaluation: cells (default 5).") var cells: Int?
    @Option(help: "Search: training images, half for the weights and half for the architecture (default 4000).") var searchImages: Int?
    @Option(help: "Search: batch size (default 32).") var searchBatchSize: Int?
    @Option(help: "Search: epochs (default 3).") var searchEpochs: Int?
    @Option(help: "Search: --memory-budget of every search (default none).") var searchMemoryBudget: String?
    @Option(name: .customLong("method-set"), help: "METHOD:KEY=VALUE, a setting of one method's searches over the protocol's (repeatable), e.g. random:strategy.samples_per_epoch=8.")
    var methodSets: [String] = []
    @Option(help: "Evaluation: epochs of training the found network (default 2).") var evalEpochs: Int?
    @Option(help: "Evaluation: training images, the first N (0 = all; default 10000).") var evalImages: Int?
    @Option(help: "Evaluation: batch size (default 96).") var evalBatchSize: Int?
    @Option(help: "Evaluation: learning rate, cosine to 0 (default 0.05).") var evalLr: Float?
    @Option(help: "Evaluation: weight decay (default 3e-4).") var evalWeightDecay: Float?
    @Option(help: "Evaluation: cutout length (0 = none, the default).") var evalCutout: Int?
    @Option(help: "Evaluation: random crops and flips, true or false (default false).") var evalAugment: Bool?
    @Option(help: "Evaluation: test images, the first N (0 = all, the default).") var testImages: Int?

    /// The defaults (or `base`, a folder's protocol) with the flags given over them.
    func protocolAsked(over base: ComparisonProtocol) throws -> ComparisonProtocol {
        var p = base
        if let dataset { p.dataset = dataset }
        if let dataDir { p.dataDir = URL(fileURLWithPath: (dataDir as NSString).expandingTildeInPath).standardizedFileURL.path }   // absolute: a rerun may start elsewhere
        if let channels { p.channels = channels }
        if let cells { p.cells = cells }
        if let searchImages { p.searchImages = searchImages }
        if let searchBatchSize { p.searchBatchSize = searchBatchSize }
        if let searchEpochs { p.searchEpochs = searchEpochs }
        if let searchMemoryBudget {
            guard let b = parseBytes(searchMemoryBudget), b > 0 else { throw ValidationError("--search-memory-budget '\(searchMemoryBudget)' is not a size; write e.g. 1GiB") }
            p.searchMemoryBudget = searchMemoryBudget
        }
        for s in methodSets {
            guard let colon = s.firstIndex(of: ":"), s[..<colon].count > 0, let eq = s[colon...].firstIndex(of: "="), eq > s.index(after: colon) else {
                throw ValidationError("--method-set '\(s)' is not METHOD:KEY=VALUE (e.g. random:strategy.samples_per_epoch=8)")
            }
            let method = String(s[..<colon]), key = String(s[s.index(after: colon)..<eq])
            p.methodSettings[method] = (p.methodSettings[method] ?? []).filter { !$0.hasPrefix(key + "=") } + [String(s[s.index(after: colon)...])]
        }
        if let evalEpochs { p.evalEpochs = evalEpochs }
        if let evalImages { p.evalImages = evalImages }
        if let evalBatchSize { p.evalBatchSize = evalBatchSize }
        if let evalLr { p.evalLearningRate = evalLr }
        if let evalWeightDecay { p.evalWeightDecay = evalWeightDecay }
        if let evalCutout { p.evalCutout = evalCutout }
        if let evalAugment { p.evalAugment = evalAugment }
        if let testImages { p.testImages = testImages }
        for (name, v) in [("--channels", p.channels), ("--cells", p.cells), ("--search-images", p.searchImages), ("--search-batch-size", p.searchBatchSize),
                          ("--search-epochs", p.searchEpochs), ("--eval-epochs", p.evalEpochs), ("--eval-batch-size", p.evalBatchSize)] where v < 1 {
            throw ValidationError("\(name) must be at least 1 (got \(v))")
        }
        for (name, v) in [("--eval-images", p.evalImages), ("--eval-cutout", p.evalCutout), ("--test-images", p.testImages)] where v < 0 {
            throw ValidationError("\(name) must be 0 or more (got \(v))")
        }
        return p
    }

    /// `--seeds` as a list.
    func seedList() throws -> [UInt64]? {
        guard let seeds else { return nil }
        if let n = Int(seeds) {
            guard n >= 1 else { throw ValidationError("--seeds \(seeds): give a count of at least 1, or a list such as 1,2,3") }
            return (1...n).map(UInt64.init)
        }
        let list = seeds.split(separator: ",").map { UInt64($0.trimmingCharacters(in: .whitespaces)) }
        guard !list.isEmpty, list.allSatisfy({ $0 != nil }) else { throw ValidationError("--seeds '\(seeds)' is neither a count nor a comma-separated list of seeds (e.g. 1,2,3)") }
        let values = list.map { $0! }
        guard Set(values).count == values.count else { throw ValidationError("--seeds '\(seeds)' names a seed twice") }
        return values
    }

    /// The grid asked: `--methods` (else every method the plugins bring), random search added
    /// unless `--no-random`, each name checked against the plugins.
    func gridAsked(registry: PluginRegistry, stored: ComparisonGrid?) throws -> ComparisonGrid {
        var names: [String]
        if let methods {
            names = methods.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            guard !names.isEmpty else { throw ValidationError("--methods is empty; name at least one method (`espalier plugins` lists them)") }
        } else {
            names = stored?.methods ?? registry.searchMethods.map(\.name).sorted()
        }
        if noRandom { names.removeAll { $0 == "random" } } else if !names.contains("random") { names.append("random") }
        var seen = Set<String>()
        names = names.filter { seen.insert($0).inserted }
        guard !names.isEmpty else { throw ValidationError("the grid has no method: name some with --methods") }
        // The grid's methods, and those `--method-set` names (a misspelt one would set nothing).
        for n in names + methodSets.compactMap({ $0.split(separator: ":").first.map(String.init) }) {
            do { _ = try registry.searchMethod(named: n) } catch { throw ValidationError("\(error)") }
        }
        return ComparisonGrid(methods: names, seeds: try seedList() ?? stored?.seeds ?? [1, 2, 3])
    }

    /// Rank 0's work before any cell: the folder (new, or an earlier comparison's), its protocol
    /// and grid, and the cells to run.
    func prepare(folder: String, registry: PluginRegistry) throws -> Plan {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        let stored: ComparisonFile?
        if fm.fileExists(atPath: folder, isDirectory: &isDir) {
            guard isDir.boolValue else { throw ValidationError("--out \(folder) is a file; give a folder for the comparison") }
            stored = try ComparisonFile.load(folder: folder)
            if stored == nil, let entries = try? fm.contentsOfDirectory(atPath: folder), !entries.isEmpty {
                throw ValidationError("--out \(folder) holds files but no \(ComparisonFile.name): it is not a comparison's folder, and it is left untouched. "
                                      + "Give a new or empty folder")
            }
        } else {
            stored = nil
        }
        if reportOnly && stored == nil {
            throw ValidationError("--report-only: \(folder) holds no comparison (no \(ComparisonFile.name)); run `espalier compare --out \(folder)` first")
        }
        let asked = try protocolAsked(over: stored?.comparison ?? ComparisonProtocol())
        if let stored {
            let changed = asked.differences(from: stored.comparison)
            guard changed.isEmpty else {
                throw ValidationError("\(folder) is a comparison run under another protocol (\(changed.joined(separator: "; "))). "
                                      + "A comparison continues under its own protocol: drop those flags, or give a new --out")
            }
        }
        let file = ComparisonFile(comparison: asked, grid: try gridAsked(registry: registry, stored: stored?.grid))
        if reportOnly { return Plan(file: file, todo: []) }
        try fm.createDirectory(atPath: folder, withIntermediateDirectories: true)
        if stored != file { try file.write(folder: folder) }
        let wanted: [ComparisonCell]
        if onlyCells.isEmpty {
            wanted = file.grid.cells
        } else {
            wanted = try onlyCells.map { text in
                let c: ComparisonCell
                do { c = try ComparisonCell(parsing: text) } catch { throw ValidationError("\(error)") }
                guard file.grid.methods.contains(c.method), file.grid.seeds.contains(c.seed) else {
                    throw ValidationError("--cell \(text) is not in this comparison's grid (methods \(file.grid.methods.joined(separator: ", ")); "
                                          + "seeds \(file.grid.seeds.map(String.init).joined(separator: ", ")))")
                }
                return c
            }
        }
        return Plan(file: file, todo: try wanted.filter { try CellResult.load($0, in: folder)?.ok != true })
    }

    struct Plan: Codable {
        var file: ComparisonFile
        var todo: [ComparisonCell]
    }

    func run() throws {
        let folder = URL(fileURLWithPath: (out as NSString).expandingTildeInPath).standardizedFileURL.path
        let ranks = try RankRuntime.start()
        try RankRuntime.run(ranks) {
            let registry = dirs.loadRegistry(quiet: !ranks.isRoot)
            let plan = try ranks.onRoot { try prepare(folder: folder, registry: registry) }
            let mine = plan.todo.enumerated().filter { $0.offset % ranks.size == ranks.rank }.map(\.element)
            if ranks.isRoot {
                print("comparison \(folder): \(plan.file.grid.sizeDescription); "
                      + (plan.todo.isEmpty ? "no cell to run" : "\(plan.todo.count) cell(s) to run") + (ranks.size > 1 ? " on \(ranks.size) ranks" : ""))
                fflush(stdout)
            }
            let runner = CellRunner(file: plan.file, folder: folder, pluginDirs: dirs.pluginDirs, ranks: ranks)
            var results: [CellResult] = []
            var interrupted = false
            signal(SIGINT) { _ in compareInterrupts += 1 }
            signal(SIGUSR1) { _ in compareInterrupts += 1 }   // mpirun passes it on to every rank: a graceful stop
            for (k, cell) in mine.enumerated() {
                guard let r = try runner.run(cell, number: k + 1, of: mine.count) else { interrupted = true; break }
                results.append(r)
            }
            signal(SIGINT, SIG_DFL)
            signal(SIGUSR1, SIG_DFL)
            // Every rank's results to rank 0 (its folder may be on another machine).
            if ranks.isDistributed {
                for r in 0..<ranks.size {
                    let theirs: [CellResult] = try ranks.broadcast(r == ranks.rank ? results : nil, root: r)
                    if ranks.isRoot && r != 0 {
                        for result in theirs where try CellResult.load(result.cell, in: folder) != result { try result.write(in: folder) }
                    }
                }
            }
            let stopped = try ranks.any(interrupted)
            guard ranks.isRoot else {
                if stopped { throw ExitCode(130) }
                return
            }
            let all = try plan.file.grid.cells.compactMap { try CellResult.load($0, in: folder) }
            let report = ComparisonReport(file: plan.file, results: all)
            let written = try report.write(folder: folder)
            print("\n" + report.markdown)
            print("written: " + written.joined(separator: ", "))
            if stopped {
                print("interrupted: the cells that finished are kept; run the same command again to continue")
                throw ExitCode(130)
            }
            let failed = all.filter { $0.status == "failed" }
            if !failed.isEmpty {
                print("\(failed.count) cell(s) failed (\(failed.map { $0.cell.description }.joined(separator: ", "))); "
                      + "their cell.json says why. Run the same command again to redo them")
                throw ExitCode.failure
            }
        }
    }
}

/// Runs one cell: the search, then the training of what it found, as child processes.
struct CellRunner {
    let file: ComparisonFile
    let folder: String
    let pluginDirs: [String]
    let ranks: Communicator

    var executable: String { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0] }

    /// The children's environment: without mpirun's variables (each child is a process of its
    /// own, not a rank), and with this rank's share of the cores on its machine.
    var childEnvironment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        let local = env["OMPI_COMM_WORLD_LOCAL_SIZE"].flatMap(Int.init) ?? 1
        for k in env.keys where k.hasPrefix("OMPI_") || k.hasPrefix("PMIX_") || k.hasPrefix("PMI_") { env[k] = nil }
        env[Espalier.dieWithParentVariable] = String(getpid())   // a child never outlives the grid that started it
        if local > 1 && env["ESPALIER_THREADS"] == nil {
            env["ESPALIER_THREADS"] = String(max(1, ProcessInfo.processInfo.activeProcessorCount / local))
        }
        return env
    }

    /// Runs `arguments` (after the executable and the plugin folders) with its output in `log`:
    /// the exit status (128 + N for signal N) and the wall time.
    /// A log that exists already (a resumed search's) is added to.
    /// The child runs in a process group of its own (Foundation's Process), so a Ctrl-C at the
    /// terminal reaches this process only: each press (and SIGUSR1) is passed on to the child as
    /// one SIGINT, which a search answers with a checkpoint (a second press within 5 s ends it).
    func child(_ arguments: [String], log: String) throws -> (status: Int32, seconds: Double) {
        guard FileManager.default.fileExists(atPath: log) || FileManager.default.createFile(atPath: log, contents: nil),
              let handle = FileHandle(forWritingAtPath: log) else {
            throw EspalierError.data(file: log, problem: "cannot be created; check that the comparison's folder is writable")
        }
        defer { try? handle.close() }
        handle.seekToEndOfFile()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments + pluginDirs.flatMap { ["--plugin-dir", $0] }
        p.environment = childEnvironment
        p.standardOutput = handle
        p.standardError = handle
        p.standardInput = FileHandle.nullDevice
        handle.write(Data(("$ espalier " + (p.arguments ?? []).joined(separator: " ") + "\n").utf8))
        let started = DispatchTime.now().uptimeNanoseconds
        try p.run()
        var passedOn = compareInterrupts
        while p.isRunning {
            if compareInterrupts != passedOn {
                passedOn = compareInterrupts
                kill(p.processIdentifier, SIGINT)
            }
            usleep(20_000)
        }
        p.waitUntilExit()
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        return (p.terminationReason == .uncaughtSignal ? 128 + p.terminationStatus : p.terminationStatus, seconds)
    }

    /// The last non-empty line of a log (what a failed child said last).
    func lastLine(_ log: String) -> String {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).last.map { String($0.suffix(300)) } ?? "(no output)"
    }

    /// A progress line, on standard output at once (also when it is a file or a pipe).
    func say(_ text: String) {
        if ranks.isRoot { print(text); fflush(stdout) } else { FileHandle.standardError.write(Data("rank \(ranks.rank): \(text)\n".utf8)) }
    }

    /// Runs `cell` and writes its cell.json: "ok", "failed" (why), or "interrupted" (Ctrl-C or
    /// SIGUSR1 stopped it; then nil is returned). An interrupted cell continues where it stopped: a
    /// search with a checkpoint resumes from it (bit for bit, its time the sum of its attempts), a
    /// finished search is kept and only the training runs again; anything else starts over.
    func run(_ cell: ComparisonCell, number: Int, of count: Int) throws -> CellResult? {
        let fm = FileManager.default
        let dir = (folder as NSString).appendingPathComponent(cell.folder)
        func path(_ name: String) -> String { (dir as NSString).appendingPathComponent(name) }
        func exists(_ name: String) -> Bool { fm.fileExists(atPath: path(name)) }
        let earlier = try CellResult.load(cell, in: folder).flatMap { $0.status == "interrupted" ? $0 : nil }
        let searchDone = earlier?.found != nil && exists(earlier!.found!)
        let resumable = earlier != nil && !searchDone && exists("search/config.json")
        for name in [CellResult.name, "train", "train.log"] + (searchDone || resumable ? [] : ["search", "search.log"]) where exists(name) {
            try fm.removeItem(atPath: path(name))
        }
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let p = file.comparison
        var result = CellResult(method: cell.method, seed: cell.seed, status: "failed")
        func failed(_ why: String) throws -> CellResult {
            result.failure = why
            try result.write(in: folder)
            say("[\(number)/\(count)] \(cell): failed: \(why)")
            return result
        }
        func interrupted() throws -> CellResult? {
            result.status = "interrupted"
            try result.write(in: folder)
            say("[\(number)/\(count)] \(cell): interrupted; a rerun continues it")
            return nil
        }
        if compareInterrupts > 0 { return nil }
        if searchDone {
            result = earlier!
            say("[\(number)/\(count)] \(cell): the search had finished; training the found network again …")
        } else {
            let arguments: [String]
            if resumable {
                arguments = ["search", "--resume", path("search")] + (exists("search/checkpoint.safetensors") ? [] : ["--restart"])
                say("[\(number)/\(count)] \(cell): resuming its search …")
            } else {
                arguments = p.searchArguments(method: cell.method, seed: cell.seed, out: path("search"))
                say("[\(number)/\(count)] \(cell): searching …")
            }
            let search = try child(arguments, log: path("search.log"))
            let searchSeconds = (earlier?.searchSeconds ?? 0) + search.seconds
            result.searchSeconds = searchSeconds
            if search.status == 130 || compareInterrupts > 0 { return try interrupted() }
            guard search.status == 0 else { return try failed("the search exited with status \(search.status): \(lastLine(path("search.log"))) (see \(path("search.log")))") }
            let (peak, rss) = searchPeaks(log: path("search/log.jsonl"))
            result.searchPeakBytes = peak; result.searchPeakResidentBytes = rss
            if exists("search/pruned.json") { result.found = "search/pruned.json" } else if exists("search/genotype.json") { result.found = "search/genotype.json" } else {
                return try failed("the search wrote neither genotype.json nor pruned.json (see \(path("search.log")))")
            }
            say("[\(number)/\(count)] \(cell): searched in \(String(format: "%.0f", searchSeconds)) s; training the found network …")
        }
        let found: ComparisonProtocol.Found = result.found == "search/pruned.json" ? .pruned(path: path("search/pruned.json"))
            : .genotype(path: path("search/genotype.json"), perCell: try Genotype.load(path: path("search/genotype.json")).perCell != nil)
        let train = try child(p.evaluationArguments(found, seed: cell.seed, out: path("train")), log: path("train.log"))
        if train.status == 130 || compareInterrupts > 0 { return try interrupted() }
        result.evaluationSeconds = train.seconds
        guard train.status == 0 else { return try failed("the training exited with status \(train.status): \(lastLine(path("train.log"))) (see \(path("train.log")))") }
        let outcome: TrainingOutcome
        do { outcome = try TrainingOutcome.load(folder: path("train")) } catch { return try failed("\(error)") }
        result.testAccuracy = outcome.testAccuracy; result.testImages = outcome.testImages
        result.parameters = outcome.parameters; result.forwardFlops = outcome.forwardFlops
        result.status = "ok"
        try result.write(in: folder)
        say(String(format: "[%d/%d] %@: test accuracy %.2f %% (search %.0f s, training %.0f s)", number, count, cell.description,
                   outcome.testAccuracy * 100, result.searchSeconds ?? 0, train.seconds))
        return result
    }

    /// The search's peak over its epochs (log.jsonl): the accountant's and the resident set's.
    func searchPeaks(log: String) -> (Int?, Int?) {
        guard let text = try? String(contentsOfFile: log, encoding: .utf8) else { return (nil, nil) }
        var peak: Int?, rss: Int?
        for line in text.split(separator: "\n") {
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { continue }
            if let v = (o["peak_bytes"] as? NSNumber)?.intValue { peak = max(peak ?? 0, v) }
            if let v = (o["rss_peak_bytes"] as? NSNumber)?.intValue { rss = max(rss ?? 0, v) }
        }
        return (peak, rss)
    }
}
