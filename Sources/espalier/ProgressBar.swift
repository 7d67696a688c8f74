// A progress bar on standard error: redrawn in place on a terminal, a line every 10% otherwise.

import EspalierCore
import Foundation

final class ProgressBar: ProgressSink {
    let label: String
    let isTTY = isatty(2) != 0
    var start = DispatchTime.now().uptimeNanoseconds
    var lastDecile = -1
    var epochLine: (EpochReport) -> String

    init(label: String, epochLine: @escaping (EpochReport) -> String) {
        self.label = label
        self.epochLine = epochLine
    }

    func step(_ done: Int, of total: Int, loss: Double, accuracy: Double) {
        if done == 1 { start = DispatchTime.now().uptimeNanoseconds; lastDecile = -1 }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        let eta = done > 0 ? elapsed / Double(done) * Double(total - done) : 0
        let width = 30, filled = total > 0 ? width * done / total : width
        let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
        let text = String(format: "%@ [%@] %d/%d  loss %.4f  acc %.2f%%  %.0fs elapsed, %.0fs left",
                          label as NSString, bar as NSString, done, total, loss, accuracy * 100, elapsed, eta)
        if isTTY {
            FileHandle.standardError.write(("\r" + text + "\u{1B}[K").data(using: .utf8)!)
            if done == total { FileHandle.standardError.write("\n".data(using: .utf8)!) }
        } else {
            let decile = total > 0 ? 10 * done / total : 10
            if decile != lastDecile { lastDecile = decile; FileHandle.standardError.write((text + "\n").data(using: .utf8)!) }
        }
    }

    func epochDone(_ report: EpochReport) {
        print(epochLine(report))
        fflush(stdout)
    }
}
