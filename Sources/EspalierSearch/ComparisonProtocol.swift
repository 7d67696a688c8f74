// What `espalier compare` holds fixed for every method: one declared protocol (the search's data,
// space, epochs and budget; the evaluation's training recipe and test set) and the grid of
// methods × seeds it runs, kept in OUT/protocol.json so that a rerun continues the same grid and
// refuses a changed protocol. Each cell (a method and a seed) is one `espalier search --method M
// --seed S` followed by training the network it found from scratch (`espalier train`, or
// `espalier train-pruned` for a hyper-connected search) with the same seed, so that every method
// of a seed gets the same initialisation and batch order (paired comparisons). The cell writes
// OUT/cells/<method>/seed-<s>/cell.json (CellResult) last, atomically: a cell is done exactly
// when that file says "ok" ("failed" says why; "interrupted" is continued by a rerun).

import EspalierCore
import Foundation

public struct ComparisonProtocol: Codable, Equatable, Sendable {
    // MARK: Data
    public var dataset = "fashion-mnist"
    public var dataDir: String? = nil

    // MARK: The search
    public var channels = 8
    public var cells = 5
    /// Training images the search uses (half for the weights, half for the architecture).
    public var searchImages = 4000
    public var searchBatchSize = 32
    public var searchEpochs = 3
    /// `--memory-budget` of every search (nil: none).
    public var searchMemoryBudget: String? = nil
    /// `--set KEY=VALUE` per method, with "{cells}" and "{channels}" replaced by the protocol's.
    public var methodSettings: [String: [String]] = ComparisonProtocol.defaultMethodSettings

    /// What the default protocol sets, and why:
    /// - P-DARTS's stages and Bonsai-Net's sections end at the protocol's depth (their own
    ///   defaults, 5,11,17 and 3,5,8 cells, are the papers' CIFAR depths);
    /// - Bonsai-Net grows inside a memory budget it cannot run without: 512 MiB, a little over the
    ///   predicted peak of a DARTS search under this protocol (442 MiB);
    /// - random search's budget: `samples_per_epoch` children per epoch, each trained
    ///   `child_steps` steps; 6 × 100 was chosen from earlier single-seed runs of this protocol
    ///   (4 × 100 took 52 s, the other methods' median 69 s); the report's Budget line measures it.
    public static let defaultMethodSettings = [
        "bonsai": ["strategy.budget=512MiB", "strategy.section_cells=3,4,{cells}"],
        "pdarts": ["strategy.stage_cells=3,4,{cells}"],
        "random": ["strategy.samples_per_epoch=6", "strategy.child_steps=100"],
    ]

    // MARK: The evaluation: the found network trained from scratch, then tested
    public var evalEpochs = 2
    /// Training images (the first N; 0 = all).
    public var evalImages = 10000
    public var evalBatchSize = 96
    public var evalLearningRate: Float = 0.05
    public var evalWeightDecay: Float = 3e-4
    public var evalCutout = 0
    public var evalAugment = false
    /// Test images (the first N; 0 = all).
    public var testImages = 0

    public init() {}

    /// The method's `--set` values with the protocol's sizes put in.
    public func settings(for method: String) -> [String] {
        (methodSettings[method] ?? []).map {
            $0.replacingOccurrences(of: "{cells}", with: String(cells)).replacingOccurrences(of: "{channels}", with: String(channels))
        }
    }

    /// The data flags every command of a cell gets.
    var dataArguments: [String] { ["--dataset", dataset] + (dataDir.map { ["--data-dir", $0] } ?? []) }

    /// `espalier search …` for one cell (without the executable).
    public func searchArguments(method: String, seed: UInt64, out: String) -> [String] {
        ["search", "--method", method] + settings(for: method).flatMap { ["--set", $0] } + dataArguments
            + ["--channels", String(channels), "--cells", String(cells), "--train-images", String(searchImages),
               "--batch-size", String(searchBatchSize), "--epochs", String(searchEpochs), "--seed", String(seed)]
            + (searchMemoryBudget.map { ["--memory-budget", $0] } ?? []) + ["--out", out]
    }

    /// What a search found: a genotype (`espalier train`) or a hyper-connected search's pruned
    /// network (`espalier train-pruned`).
    public enum Found: Equatable, Sendable {
        case genotype(path: String, perCell: Bool)
        case pruned(path: String)
    }

    /// The training of what a search found, from scratch (without the executable).
    public func evaluationArguments(_ found: Found, seed: UInt64, out: String) -> [String] {
        let common = dataArguments + ["--epochs", String(evalEpochs), "--train-images", String(evalImages), "--test-images", String(testImages),
                                      "--batch-size", String(evalBatchSize), "--lr", String(evalLearningRate),
                                      "--weight-decay", String(evalWeightDecay), "--seed", String(seed), "--out", out]
        switch found {
        case .genotype(let path, let perCell):
            // A genotype with per-cell entries (FiGS's export) sets its own depth.
            return ["train", "--genotype", path, "--channels", String(channels)] + (perCell ? [] : ["--cells", String(cells)])
                + common + ["--cutout", String(evalCutout)] + (evalAugment ? ["--augment"] : [])
        case .pruned(let path):
            return ["train-pruned", "--pruned", path, "--channels", String(channels)] + common
                + ["--cutout", String(evalCutout)] + (evalAugment ? ["--augment"] : [])
        }
    }

    /// One line per field that differs from `other` ("search_epochs: 3 here, 5 in the folder").
    public func differences(from other: ComparisonProtocol) -> [String] {
        func dictionary(_ p: ComparisonProtocol) -> [String: String] {
            let e = JSONEncoder()
            e.keyEncodingStrategy = .convertToSnakeCase
            e.outputFormatting = .sortedKeys
            guard let data = try? e.encode(p), let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return [:] }
            return object.mapValues { v in
                (try? JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .fragmentsAllowed])).map { String(decoding: $0, as: UTF8.self) } ?? "\(v)"
            }
        }
        let mine = dictionary(self), theirs = dictionary(other)
        return Set(mine.keys).union(theirs.keys).sorted().compactMap { k in
            mine[k] == theirs[k] ? nil : "\(k): \(mine[k] ?? "none") asked, \(theirs[k] ?? "none") in the folder"
        }
    }
}

/// The methods and seeds of a comparison; random search is one of the methods unless dropped.
public struct ComparisonGrid: Codable, Equatable, Sendable {
    public var methods: [String]
    public var seeds: [UInt64]

    public init(methods: [String], seeds: [UInt64]) {
        self.methods = methods; self.seeds = seeds
    }

    /// "15 methods × 3 seeds", "1 method × 1 seed": the grid's size in words.
    public var sizeDescription: String {
        func counted(_ n: Int, _ noun: String) -> String { "\(n) \(noun)\(n == 1 ? "" : "s")" }
        return "\(counted(methods.count, "method")) × \(counted(seeds.count, "seed"))"
    }

    /// Every cell, seed by seed (so that a partial grid has whole seeds first).
    public var cells: [ComparisonCell] { seeds.flatMap { s in methods.map { ComparisonCell(method: $0, seed: s) } } }
}

/// One method at one seed.
public struct ComparisonCell: Hashable, Codable, Sendable, CustomStringConvertible {
    public var method: String
    public var seed: UInt64
    public init(method: String, seed: UInt64) { self.method = method; self.seed = seed }

    /// Its folder under the comparison's.
    public var folder: String { "cells/\(method)/seed-\(seed)" }
    public var description: String { "\(method) seed \(seed)" }

    /// "METHOD:SEED" (`--cell`).
    public init(parsing text: String) throws {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, let seed = UInt64(parts[1]) else {
            throw EspalierError.config("--cell '\(text)' is not METHOD:SEED (e.g. darts:2)")
        }
        self.init(method: String(parts[0]), seed: seed)
    }
}

/// OUT/protocol.json.
public struct ComparisonFile: Codable, Equatable, Sendable {
    /// What wrote it (a later format is refused, not misread).
    public var format = 1
    public var comparison: ComparisonProtocol
    public var grid: ComparisonGrid

    public init(comparison: ComparisonProtocol, grid: ComparisonGrid) {
        self.comparison = comparison; self.grid = grid
    }

    public static let name = "protocol.json"

    public static func load(folder: String) throws -> ComparisonFile? {
        let path = (folder as NSString).appendingPathComponent(name)
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let file: ComparisonFile
        do { file = try SnakeCaseJSON.decode(ComparisonFile.self, from: Data(contentsOf: URL(fileURLWithPath: path))) } catch {
            throw EspalierError.data(file: path, problem: "not a comparison's protocol (\(error)); it was not written by `espalier compare`, or is damaged")
        }
        guard file.format == 1 else {
            throw EspalierError.data(file: path, problem: "format \(file.format) is newer than this espalier reads (1); use the espalier that wrote it")
        }
        return file
    }

    public func write(folder: String) throws {
        try AtomicFile.write(SnakeCaseJSON.encode(self), to: (folder as NSString).appendingPathComponent(Self.name))
    }
}

/// What one cell produced (cell.json): "ok" with its figures, "failed" with why, or "interrupted"
/// (stopped by Ctrl-C; what it had done, so that a rerun continues it).
public struct CellResult: Codable, Equatable, Sendable {
    public var method: String
    public var seed: UInt64
    public var status: String
    /// Why it failed, and the log that says more.
    public var failure: String? = nil
    /// Test accuracy of the trained network (a fraction), and on how many images.
    public var testAccuracy: Double? = nil
    public var testImages: Int? = nil
    /// Wall time of the search process, and of the evaluation's training.
    public var searchSeconds: Double? = nil
    public var evaluationSeconds: Double? = nil
    /// The search's peak: the accountant's (every tensor it counts) and the process's resident set
    /// (the largest over the epochs of log.jsonl).
    public var searchPeakBytes: Int? = nil
    public var searchPeakResidentBytes: Int? = nil
    /// The trained network.
    public var parameters: Int? = nil
    public var forwardFlops: Int? = nil
    /// The architecture found (genotype.json or pruned.json, relative to the cell's folder).
    public var found: String? = nil

    public init(method: String, seed: UInt64, status: String) {
        self.method = method; self.seed = seed; self.status = status
    }

    public var ok: Bool { status == "ok" }
    public var cell: ComparisonCell { ComparisonCell(method: method, seed: seed) }

    public static let name = "cell.json"

    /// The cell's result in `folder` (the comparison's), nil if it has none (not run, or stopped).
    public static func load(_ cell: ComparisonCell, in folder: String) throws -> CellResult? {
        let path = ((folder as NSString).appendingPathComponent(cell.folder) as NSString).appendingPathComponent(name)
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        do { return try decode(Data(contentsOf: URL(fileURLWithPath: path))) } catch {
            throw EspalierError.data(file: path, problem: "damaged cell result (\(error)); delete the cell's folder and run `espalier compare` again to redo it")
        }
    }

    public static func decode(_ data: Data) throws -> CellResult {
        try SnakeCaseJSON.decode(CellResult.self, from: data)
    }

    public func write(in folder: String) throws {
        let dir = (folder as NSString).appendingPathComponent(cell.folder)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try AtomicFile.write(SnakeCaseJSON.encode(self), to: (dir as NSString).appendingPathComponent(Self.name))
    }
}
