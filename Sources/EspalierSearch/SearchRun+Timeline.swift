// The memory timeline of a search: after every epoch a row of OUT/memory.csv (epoch, the cells
// it trained, the accountant's measured peak of the epoch, the dry-run prediction for that
// network made at the epoch's start, the budget, the process's peak resident set in the epoch
// and what of it the accountant does not count: peak RSS − accounted peak, i.e. code, libraries,
// the allocator, the buffer pool's idle buffers, thread stacks) and OUT/memory.svg redrawn from
// it — measured against predicted against the budget, with a marker wherever the cell count
// changed (P-DARTS stages, Bonsai-Net sections). The budget covers accounted bytes only.

import EspalierCore
import Foundation

public struct MemoryTimelineRow: Sendable, Equatable {
    public var epoch: Int
    public var cells: Int
    public var measured: Int
    public var predicted: Int?
    public var budget: Int?
    /// The process's peak resident set in the epoch (Linux; nil where it cannot be read).
    public var rssPeak: Int? = nil
    /// rssPeak − measured: bytes outside the accountant (and so outside the budget).
    public var unaccounted: Int? { rssPeak.map { $0 - measured } }

    var csv: String {
        func text(_ v: Int?) -> String { v.map { String($0) } ?? "" }
        let fields: [String] = [String(epoch), String(cells), String(measured), text(predicted), text(budget), text(rssPeak), text(unaccounted)]
        return fields.joined(separator: ",")
    }
    static let header = "epoch,cells,measured_peak_bytes,predicted_peak_bytes,budget_bytes,rss_peak_bytes,unaccounted_bytes"
}

/// The process's resident set from /proc/self/status (Linux): now (VmRSS) and its high-water
/// mark (VmHWM); nil where it cannot be read.
public func residentSetBytes() -> (current: Int, peak: Int)? {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
    func field(_ name: String) -> Int? {
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return nil }
        let parts = line.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count >= 2, let kib = Int(parts[1]) else { return nil }
        return kib * 1024
    }
    guard let now = field("VmRSS"), let peak = field("VmHWM") else { return nil }
    return (now, peak)
}

/// Starts a new high-water mark of the resident set at what is resident now (Linux: "5" to
/// /proc/self/clear_refs); false where it cannot, and the mark stays the process's lifetime peak.
@discardableResult
public func resetResidentSetPeak() -> Bool {
    guard let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
    defer { try? h.close() }
    do { try h.write(contentsOf: Data("5".utf8)); return true } catch { return false }
}

extension SearchRun {
    /// Appends the row of the epoch just finished (the loop has advanced `epoch` past it) and
    /// redraws the plot (no output folder or a dry run: nothing).
    /// `rssPeak`: the process's peak resident set in the epoch (the log line's), if known.
    /// Returns the row's prediction (nil when it has none or nothing was written).
    @discardableResult
    func appendMemoryTimeline(epochPeak: Int, rssPeak: Int? = nil) throws -> Int? {
        guard let dir = outDirectory, !accountant.isDryRun else { return nil }
        // The network the epoch trained and its prediction from the epoch's start (after
        // epoch_begin; a growth at the epoch's end shows in the next row).
        let start = position.tally.epochStart ?? (supernet.space.cells, predictedNow())
        let row = MemoryTimelineRow(epoch: epoch, cells: start.cells, measured: epochPeak, predicted: start.predicted, budget: accountant.budget,
                                    rssPeak: rssPeak)
        let path = (dir as NSString).appendingPathComponent("memory.csv")
        var rows = (try? Self.readMemoryTimeline(path)) ?? []
        rows.removeAll { $0.epoch >= row.epoch }   // a resumed run rewrites the epochs it repeats
        rows.append(row)
        try AtomicFile.write(([MemoryTimelineRow.header] + rows.map(\.csv)).joined(separator: "\n") + "\n", to: path)
        try AtomicFile.write(Self.memorySVG(rows), to: (dir as NSString).appendingPathComponent("memory.svg"))
        return row.predicted
    }

    /// The dry-run prediction for the network as it is now, plus the dataset, so it compares with
    /// the measured peak, which includes the dataset.
    func predictedNow() -> Int? {
        (try? predictPeak(change: "{}")).map { $0.stepPeak + trainLoader.view.dataset.byteCount }
    }

    /// Called after epoch_begin: the epoch's cells and prediction for its timeline row; the
    /// resident set's high-water mark starts again (so the epoch's peak RSS is its own).
    func noteEpochStart() {
        position.tally.epochStart = outDirectory == nil || accountant.isDryRun ? nil : (supernet.space.cells, predictedNow())
        if !accountant.isDryRun { resetResidentSetPeak() }
    }

    /// The epoch's peak resident set and its unaccounted part (peak RSS − the accountant's epoch
    /// peak) into its log line (nil where /proc cannot be read).
    func recordResidentSet(_ log: inout SearchEpochLog) {
        guard !accountant.isDryRun, let rss = residentSetBytes() else { return }
        log.rssPeakBytes = rss.peak
        log.unaccountedBytes = rss.peak - log.peakBytes
    }

    static func readMemoryTimeline(_ path: String) throws -> [MemoryTimelineRow] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return text.split(separator: "\n").dropFirst().compactMap { line in
            let f = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            // Five columns before the resident set was logged, seven since.
            guard f.count == 5 || f.count == 7, let e = Int(f[0]), let c = Int(f[1]), let m = Int(f[2]) else { return nil }
            return MemoryTimelineRow(epoch: e, cells: c, measured: m, predicted: Int(f[3]), budget: Int(f[4]), rssPeak: f.count == 7 ? Int(f[5]) : nil)
        }
    }

    /// A line plot (MiB per epoch): measured (solid), predicted (dashed), budget (red), sections (grey).
    public static func memorySVG(_ rows: [MemoryTimelineRow]) -> String {
        let w = 640.0, h = 360.0, left = 70.0, right = 20.0, top = 30.0, bottom = 50.0
        let mib = 1048576.0
        let values = rows.flatMap { [Double($0.measured), $0.predicted.map(Double.init), $0.budget.map(Double.init)].compactMap { $0 } }
        let yMax = max(values.max() ?? 1, 1) / mib * 1.1
        let n = max(rows.count, 1)
        func x(_ i: Int) -> Double { left + (w - left - right) * (n == 1 ? 0.5 : Double(i) / Double(n - 1)) }
        func y(_ bytes: Double) -> Double { top + (h - top - bottom) * (1 - bytes / mib / yMax) }
        func path(_ points: [(Int, Double)]) -> String {
            points.enumerated().map { k, p in String(format: "%@%.1f,%.1f", k == 0 ? "M" : " L", x(p.0), y(p.1)) }.joined()
        }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        s += "<text x=\"\(Int(left))\" y=\"18\">peak memory per epoch (MiB): measured, predicted (dashed), budget (red)</text>\n"
        // Axes and ticks.
        s += String(format: "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", left, h - bottom, w - right, h - bottom)
        s += String(format: "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", left, top, left, h - bottom)
        for t in 0...4 {
            let v = yMax * Double(t) / 4
            s += String(format: "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.0f</text>\n", left - 6, y(v * mib) + 4, v)
        }
        for (i, r) in rows.enumerated() {
            s += String(format: "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%d</text>\n", x(i), h - bottom + 16, r.epoch)
            if i > 0 && r.cells != rows[i - 1].cells {
                s += String(format: "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#999\" stroke-dasharray=\"2,3\"/>\n", x(i), top, x(i), h - bottom)
                s += String(format: "<text x=\"%.1f\" y=\"%.0f\" fill=\"#666\">%d cells</text>\n", x(i) + 3, top + 12, r.cells)
            }
        }
        s += "<text x=\"\(Int((left + w - right) / 2))\" y=\"\(Int(h - 12))\" text-anchor=\"middle\">epoch</text>\n"
        let measured = rows.enumerated().map { ($0.offset, Double($0.element.measured)) }
        let predicted = rows.enumerated().compactMap { i, r in r.predicted.map { (i, Double($0)) } }
        s += "<path d=\"\(path(measured))\" fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"2\"/>\n"
        for (i, v) in measured { s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#1f5fbf\"/>\n", x(i), y(v)) }
        if !predicted.isEmpty { s += "<path d=\"\(path(predicted))\" fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\"/>\n" }
        if let b = rows.last?.budget {
            s += String(format: "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#c0392b\" stroke-width=\"1.5\"/>\n", left, y(Double(b)), w - right, y(Double(b)))
            s += String(format: "<text x=\"%.0f\" y=\"%.1f\" fill=\"#c0392b\" text-anchor=\"end\">budget %.0f MiB</text>\n", w - right, y(Double(b)) - 4, Double(b) / mib)
        }
        return s + "</svg>\n"
    }
}
