// The report of a comparison: per method, the test accuracy's mean ± standard deviation and 95 %
// t interval over its seeds, the paired difference to random search on the seeds both finished
// (with its interval and what it says), the search's wall time and peak memory (accountant and
// resident set), and the found network's parameters and FLOPs; as Markdown (report.md), CSV
// (report.csv), JSON (report.json) and an SVG plot of accuracy against search time with the
// intervals as error bars (report.svg). Accuracies are in percent.

import EspalierCore
import Foundation

public struct ComparisonReport: Codable, Equatable, Sendable {
    public struct Row: Codable, Equatable, Sendable {
        public var method: String
        /// Test accuracy (%) by seed, in the grid's seed order; failed and missing seeds left out.
        public var accuracyBySeed: [String: Double]
        public var accuracy: SampleSummary
        /// Against random search (nil for random search itself, or when it is not in the grid).
        public var pairedToRandom: PairedComparison?
        public var verdict: String?
        public var searchSeconds: SampleSummary
        /// Means over the seeds, in MiB.
        public var searchPeakMib: Double?
        public var searchPeakResidentMib: Double?
        public var parameters: Double?
        public var forwardMflops: Double?
        /// Seeds that failed, and those not run yet or interrupted.
        public var failedSeeds: [UInt64]
        public var missingSeeds: [UInt64]
    }

    public var comparison: ComparisonProtocol
    public var grid: ComparisonGrid
    public var rows: [Row]
    /// How the intervals are computed (stated in every format).
    public var intervals = "95 % two-sided Student t intervals of the mean over seeds (df = n − 1); paired: of the per-seed differences to random search"
    /// Random search's budget against the others' measured cost: its settings, its mean search
    /// time, and the median of the other methods' mean search times (nil without random search
    /// or before it and another method have finished).
    public var randomBudget: String?

    public init(file: ComparisonFile, results: [CellResult]) {
        comparison = file.comparison
        grid = file.grid
        let byCell = Dictionary(results.map { ($0.cell, $0) }, uniquingKeysWith: { a, _ in a })
        func accuracies(_ method: String) -> [UInt64: Double] {
            var out: [UInt64: Double] = [:]
            for s in file.grid.seeds { if let r = byCell[ComparisonCell(method: method, seed: s)], r.ok, let a = r.testAccuracy { out[s] = a * 100 } }
            return out
        }
        let random = file.grid.methods.contains("random") ? accuracies("random") : nil
        rows = file.grid.methods.map { m in
            let acc = accuracies(m)
            let done = file.grid.seeds.compactMap { byCell[ComparisonCell(method: m, seed: $0)] }.filter(\.ok)
            func mean(_ values: [Double]) -> Double? { values.isEmpty ? nil : values.reduce(0, +) / Double(values.count) }
            let paired = m == "random" ? nil : random.map { PairedComparison(method: acc, random: $0) }
            return Row(method: m, accuracyBySeed: Dictionary(uniqueKeysWithValues: acc.map { (String($0.key), $0.value) }),
                       accuracy: SampleSummary(file.grid.seeds.compactMap { acc[$0] }), pairedToRandom: paired, verdict: paired?.verdict,
                       searchSeconds: SampleSummary(done.compactMap(\.searchSeconds)),
                       searchPeakMib: mean(done.compactMap(\.searchPeakBytes).map { Double($0) / 1_048_576 }),
                       searchPeakResidentMib: mean(done.compactMap(\.searchPeakResidentBytes).map { Double($0) / 1_048_576 }),
                       parameters: mean(done.compactMap(\.parameters).map(Double.init)),
                       forwardMflops: mean(done.compactMap(\.forwardFlops).map { Double($0) / 1e6 }),
                       failedSeeds: file.grid.seeds.filter { byCell[ComparisonCell(method: m, seed: $0)]?.status == "failed" },
                       missingSeeds: file.grid.seeds.filter { s in byCell[ComparisonCell(method: m, seed: s)].map { !$0.ok && $0.status != "failed" } ?? true })
        }
        let others = rows.filter { $0.method != "random" }.compactMap(\.searchSeconds.mean).sorted()
        if let random = rows.first(where: { $0.method == "random" })?.searchSeconds.mean, !others.isEmpty {
            let median = others.count % 2 == 1 ? others[others.count / 2] : (others[others.count / 2 - 1] + others[others.count / 2]) / 2
            let settings = file.comparison.settings(for: "random")
            randomBudget = "random search (\(settings.isEmpty ? "its default settings" : settings.joined(separator: " "))) searched "
                + String(format: "%.0f s on average, %.2f× the median of the other methods' mean search times (%.0f s)", random, random / median, median)
        }
    }

    // MARK: Formats

    static func number(_ v: Double?, _ digits: Int = 2) -> String {
        guard let v, v.isFinite else { return "" }
        return String(format: "%.\(digits)f", v)
    }
    static func signed(_ v: Double?) -> String {
        guard let v, v.isFinite else { return "" }
        return String(format: "%+.2f", v)
    }
    static func interval(_ s: SampleSummary, signed: Bool = false) -> String {
        guard let low = s.low, let high = s.high else { return "" }
        return signed ? "[\(Self.signed(low)), \(Self.signed(high))]" : "[\(number(low)), \(number(high))]"
    }

    public var markdown: String {
        let p = comparison
        var out = "# Comparison: \(grid.sizeDescription)\n\n"
        out += "Search: \(p.dataset), C=\(p.channels), \(p.cells) cells, \(p.searchImages) training images (half weights, half architecture), "
            + "batch \(p.searchBatchSize), \(p.searchEpochs) epochs\(p.searchMemoryBudget.map { ", --memory-budget \($0)" } ?? "").\n"
        let settings = grid.methods.compactMap { m -> String? in
            let s = p.settings(for: m)
            return s.isEmpty ? nil : "\(m): " + s.joined(separator: " ")
        }
        if !settings.isEmpty { out += "Method settings: " + settings.joined(separator: "; ") + ".\n" }
        out += "Evaluation: the found network trained from scratch, \(p.evalEpochs) epochs on \(p.evalImages == 0 ? "all" : String(p.evalImages)) images, "
            + "batch \(p.evalBatchSize), lr \(p.evalLearningRate) cosine, weight decay \(p.evalWeightDecay)"
            + (p.evalCutout > 0 ? ", cutout \(p.evalCutout)" : "") + (p.evalAugment ? ", crops and flips" : "")
            + "; tested on \(p.testImages == 0 ? "all" : String(p.testImages)) test images. Each seed seeds both the search and the training.\n"
        out += "Intervals: \(intervals).\n"
        if let randomBudget { out += "Budget: \(randomBudget).\n" }
        out += "\n"
        let seedHeads = grid.seeds.map { "seed \($0)" }
        out += "| method | " + seedHeads.joined(separator: " | ") + " | mean ± sd | 95 % CI | paired diff. to random [95 % CI] | verdict | search s | search peak MiB (accountant / RSS) | parameters | MFLOPs |\n"
        out += "|" + String(repeating: "---|", count: seedHeads.count + 9) + "\n"
        for r in rows {
            let seeds = grid.seeds.map { s -> String in
                if let a = r.accuracyBySeed[String(s)] { return Self.number(a) }
                return r.failedSeeds.contains(s) ? "failed" : "–"
            }
            let meanSD = r.accuracy.n == 0 ? "" : Self.number(r.accuracy.mean) + (r.accuracy.sd.map { " ± " + Self.number($0) } ?? "")
            let paired = r.pairedToRandom.map { p in p.summary.n == 0 ? "" : Self.signed(p.summary.mean) + " " + Self.interval(p.summary, signed: true) } ?? (r.method == "random" ? "0" : "")
            let memory = r.searchPeakMib.map { Self.number($0, 0) + " / " + Self.number(r.searchPeakResidentMib, 0) } ?? ""
            out += "| \(r.method) | " + seeds.joined(separator: " | ")
                + " | \(meanSD) | \(Self.interval(r.accuracy)) | \(paired) | \(r.verdict ?? "") | \(Self.number(r.searchSeconds.mean, 0))"
                + " | \(memory) | \(Self.number(r.parameters, 0)) | \(Self.number(r.forwardMflops)) |\n"
        }
        let pending = rows.flatMap { r in r.missingSeeds.map { "\(r.method) seed \($0)" } }
        if !pending.isEmpty { out += "\nNot run yet: " + pending.joined(separator: ", ") + ".\n" }
        let failed = rows.flatMap { r in r.failedSeeds.map { "\(r.method) seed \($0)" } }
        if !failed.isEmpty { out += "\nFailed (their cell.json says why; a rerun redoes them): " + failed.joined(separator: ", ") + ".\n" }
        return out
    }

    public var csv: String {
        var out = "method,n,mean_accuracy,sd,ci_low,ci_high,paired_n,paired_mean_difference,paired_ci_low,paired_ci_high,verdict,"
            + "search_seconds,search_peak_mib,search_peak_rss_mib,parameters,forward_mflops"
            + grid.seeds.map { ",seed_\($0)" }.joined() + "\n"
        for r in rows {
            let p = r.pairedToRandom?.summary
            var fields = [r.method, String(r.accuracy.n), Self.number(r.accuracy.mean, 4), Self.number(r.accuracy.sd, 4),
                          Self.number(r.accuracy.low, 4), Self.number(r.accuracy.high, 4),
                          p.map { String($0.n) } ?? "", Self.number(p?.mean, 4),
                          Self.number(p?.low, 4), Self.number(p?.high, 4), r.verdict ?? "",
                          Self.number(r.searchSeconds.mean, 1), Self.number(r.searchPeakMib, 1),
                          Self.number(r.searchPeakResidentMib, 1), Self.number(r.parameters, 0), Self.number(r.forwardMflops, 3)]
            fields += grid.seeds.map { Self.number(r.accuracyBySeed[String($0)], 2) }
            out += fields.joined(separator: ",") + "\n"
        }
        return out
    }

    public func json() throws -> Data { try SnakeCaseJSON.encode(self) }

    /// Mean accuracy (y, its 95 % interval as error bars; none below two seeds) against mean search
    /// time (x, its interval as a fainter bar); random search in red, its mean as a dashed line.
    public var svg: String {
        let width = 760.0, height = 480.0, left = 70.0, right = 180.0, top = 40.0, bottom = 60.0
        let points = rows.compactMap { r in r.accuracy.mean.flatMap { a in r.searchSeconds.mean.map { (row: r, accuracy: a, seconds: $0) } } }
        var out = ##"<svg xmlns="http://www.w3.org/2000/svg" width="\##(Int(width))" height="\##(Int(height))" font-family="sans-serif" font-size="12">"## + "\n"
        out += ##"<rect width="100%" height="100%" fill="white"/>"## + "\n"
        out += ##"<text x="\##(left)" y="22" font-size="14">Test accuracy against search time (\##(grid.seeds.count) seeds; bars: 95 % t intervals)</text>"## + "\n"
        guard !points.isEmpty else { return out + ##"<text x="\##(left)" y="\##(top + 40)">no finished cells yet</text></svg>"## + "\n" }
        let ys = points.flatMap { [$0.row.accuracy.low ?? $0.accuracy, $0.row.accuracy.high ?? $0.accuracy] }
        let xs = points.flatMap { [$0.row.searchSeconds.low ?? $0.seconds, $0.row.searchSeconds.high ?? $0.seconds] }
        var (yLow, yHigh) = (ys.min()!, ys.max()!), (xLow, xHigh) = (min(0, xs.min()!), xs.max()!)
        if yHigh - yLow < 0.5 { yLow -= 0.25; yHigh += 0.25 }
        if xHigh - xLow < 1 { xHigh = xLow + 1 }
        let yPad = (yHigh - yLow) * 0.08
        yLow -= yPad; yHigh += yPad; xHigh += (xHigh - xLow) * 0.05
        let plotW = width - left - right, plotH = height - top - bottom
        func px(_ x: Double) -> Double { left + (x - xLow) / (xHigh - xLow) * plotW }
        func py(_ y: Double) -> Double { top + (yHigh - y) / (yHigh - yLow) * plotH }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        out += ##"<rect x="\##(f(left))" y="\##(f(top))" width="\##(f(plotW))" height="\##(f(plotH))" fill="none" stroke="#888"/>"## + "\n"
        for i in 0...4 {
            let y = yLow + (yHigh - yLow) * Double(i) / 4, x = xLow + (xHigh - xLow) * Double(i) / 4
            out += ##"<text x="\##(f(left - 6))" y="\##(f(py(y) + 4))" text-anchor="end">\##(Self.number(y))</text>"## + "\n"
            out += ##"<text x="\##(f(px(x)))" y="\##(f(top + plotH + 18))" text-anchor="middle">\##(Self.number(x, 0))</text>"## + "\n"
        }
        out += ##"<text x="\##(f(left + plotW / 2))" y="\##(f(height - 14))" text-anchor="middle">search wall time (s, mean over seeds)</text>"## + "\n"
        out += ##"<text x="18" y="\##(f(top + plotH / 2))" text-anchor="middle" transform="rotate(-90 18 \##(f(top + plotH / 2)))">test accuracy (%)</text>"## + "\n"
        if let random = points.first(where: { $0.row.method == "random" }) {
            out += ##"<line x1="\##(f(left))" x2="\##(f(left + plotW))" y1="\##(f(py(random.accuracy)))" y2="\##(f(py(random.accuracy)))" stroke="#d33" stroke-dasharray="4 3"/>"## + "\n"
        }
        for (r, accuracy, seconds) in points {
            let color = r.method == "random" ? "#d33" : "#236"
            let x = px(seconds), y = py(accuracy)
            if let low = r.accuracy.low, let high = r.accuracy.high {
                out += ##"<line x1="\##(f(x))" x2="\##(f(x))" y1="\##(f(py(low)))" y2="\##(f(py(high)))" stroke="\##(color)"/>"## + "\n"
            }
            if let low = r.searchSeconds.low, let high = r.searchSeconds.high {
                out += ##"<line x1="\##(f(px(low)))" x2="\##(f(px(high)))" y1="\##(f(y))" y2="\##(f(y))" stroke="\##(color)" stroke-opacity="0.5"/>"## + "\n"
            }
            out += ##"<circle cx="\##(f(x))" cy="\##(f(y))" r="4" fill="\##(color)"><title>\##(r.method): \##(Self.number(accuracy)) %</title></circle>"## + "\n"
            out += ##"<text x="\##(f(x + 7))" y="\##(f(y - 6))" fill="\##(color)">\##(r.method)</text>"## + "\n"
        }
        return out + "</svg>\n"
    }

    /// Writes report.md, report.csv, report.json and report.svg into `folder`, atomically.
    public func write(folder: String) throws -> [String] {
        let files = [("report.md", Data(markdown.utf8)), ("report.csv", Data(csv.utf8)), ("report.json", try json()), ("report.svg", Data(svg.utf8))]
        return try files.map { name, data in
            let path = (folder as NSString).appendingPathComponent(name)
            try AtomicFile.write(data, to: path)
            return path
        }
    }
}
