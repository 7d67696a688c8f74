// `espalier bench --variant V --shape S`: one search step of the reference workload, timed and
// measured (see ../shared/bench/README.md). `--batch`, `--init-channels` (C) and `--cells` replace
// the shape's own, for bench/sweep.sh's curve of how cost grows with size. Run one variant per
// process, as the reference does, so that the peak RSS belongs to that variant alone.

import ArgumentParser
import CEspalierSystem
import EspalierCore
import EspalierHost
import EspalierSearch
import Foundation

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench", abstract: "Time and measure one search step of a reference supernet.")
    @OptionGroup var dirs: PluginDirOptions
    @Option(help: "darts, masked or zeroshot (pcdarts and gdas come with their plugins).") var variant = "darts"
    @Option(help: "small, fmnist or cifar.") var shape = "fmnist"
    @Option(name: [.customLong("batch"), .customLong("batch-size")], help: "Images per step in place of the shape's (--batch-size is the same).") var batch: Int?
    @Option(name: .customLong("init-channels"), help: "The supernet's initial channels C in place of the shape's (search's --channels; not the images' channels).") var initChannels: Int?
    @Option(help: "The supernet's cells in place of the shape's (≥ 3; reductions at cells/3 and 2·cells/3).") var cells: Int?
    @Option(help: "Timed steps after 2 warm-ups.") var steps = 5
    @Option(help: "What backward recomputes instead of keeping: none, ops, edges or cells (see search --recompute).") var recompute = "none"
    @Flag(help: "Also time each op's forward and backward on the wall clock over the timed steps, and print them per step, largest first.") var profile = false
    @Flag(help: "Print one JSON line.") var json = false

    func run() throws {
        guard let base = BenchShape.all.first(where: { $0.name == shape }) else {
            throw ValidationError("unknown --shape '\(shape)'; choose \(BenchShape.all.map(\.name).joined(separator: ", "))")
        }
        let s: BenchShape
        do { s = try base.overriding(batch: batch, c: initChannels, cells: cells) } catch EspalierError.config(let m) { throw ValidationError(m) }
        let given = [batch.map { "--batch \($0)" }, initChannels.map { "--init-channels \($0)" }, cells.map { "--cells \($0)" }].compactMap { $0 }
        let overridden = given.isEmpty ? "" : " with " + given.joined(separator: " ")
        guard steps >= 1 else { throw ValidationError("--steps must be at least 1") }
        let mode: RecomputeMode
        do { mode = try RecomputeMode(parsing: recompute) } catch { throw ValidationError("\(error)") }
        let registry = dirs.loadRegistry()
        var r = try SearchBench.run(variant: variant, shape: s, steps: steps, registry: registry, recompute: mode, profile: profile)
        r.fmaPeakGflops = SearchBench.fmaPeak()
        if espalier_cpu_has_avx512f() != 0 {
            r.fmaPeak512Gflops = SearchBench.fmaPeak(iterations: 20_000_000, flopsPerIteration: Int(ESPALIER_FMA512_FLOPS_PER_ITERATION)) { espalier_fma512_chains($0, 0.999999, 1e-7) }
            r.fma8AfterWideRatio = SearchBench.wideClockPenalty { espalier_fma512_chains($0, 0.999999, 1e-7) }
        }
        if json {
            let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys]
            print("RESULT " + String(decoding: try enc.encode(r), as: UTF8.self))
            return
        }
        print("\(variant) · \(shape)\(overridden) (batch \(s.batch), \(s.channels)×\(s.height)×\(s.width), C=\(s.c), \(s.cells) cells, \(r.weights) weights), threads \(Parallel.workers)"
              + (mode == .none ? "" : ", --recompute \(mode.rawValue)"))
        print(String(format: "  step: median %.3f s, min %.3f s over %d steps", r.medianSeconds, r.minSeconds, r.steps))
        print(String(format: "  work: %.2f GFLOP per step, %.1f GFLOP/s = %.1f%% of the measured FMA peak (%.0f GFLOP/s, 8 lanes: AVX2, what most of our kernels issue)",
                     Double(r.flopsPerStep) / 1e9, r.gflops, 100 * r.gflops / max(r.fmaPeakGflops, 1), r.fmaPeakGflops))
        if let wide = r.fmaPeak512Gflops {
            print(String(format: "        = %.1f%% of this CPU's FMA limit (%.0f GFLOP/s, 16 lanes: AVX-512)", 100 * r.gflops / max(wide, 1), wide))
        }
        if let ratio = r.fma8AfterWideRatio {
            print(String(format: "        8-lane multiply-adds right after 16-lane ones take %.2f× as long (the clock a core gives up for AVX-512); the 1×1 micro-kernel runs %d lanes (ESPALIER_KERNEL_LANES)",
                         ratio, Kernels.sixteenLanes ? 16 : 8))
        }
        print(String(format: "  memory: peak RSS − RSS after build = %.0f MiB (peak %.0f, after build %.0f); accountant peak %@",
                     r.peakMinusBuildMiB, r.peakRSSMiB, r.rssAfterBuildMiB, formatBytes(r.peakBytes) as NSString)
              + (r.predictedPeakBytes.map { ", predicted \(formatBytes($0))" + ($0 == r.peakBytes ? " (equal)" : " (\($0 - r.peakBytes) B apart)") } ?? ""))
        for c in MemoryCategory.allCases where (r.peakByCategory[c.name] ?? 0) > 0 {
            print("    " + pad(c.name, 22) + formatBytes(r.peakByCategory[c.name]!))
        }
        print("  buffer pool over the timed steps: \(r.poolHits) reused, \(r.poolMaps) mapped, \(r.poolUnmaps) unmapped")
        let kinds = r.peakByOwnerKind.sorted { $0.value > $1.value }.prefix(10)
        print("  at the peak, by owner: " + kinds.map { "\($0.key) \(formatBytes($0.value))" }.joined(separator: ", "))
        if let times = r.opTimes, let mean = r.opTimesMeanStepSeconds { printOpTimes(times, meanStep: mean) }
    }

    /// The `--profile` table: per step, each op's calls, forward and backward time, and its share
    /// of the mean timed step; then the rest of the step, in no op (between passes: the optimizer,
    /// the loss read back, the gradients' exchange).
    func printOpTimes(_ times: [OpTime], meanStep: Double) {
        print(String(format: "  by op, wall clock per step (mean step %.1f ms; forward: from the previous op's end to this op's, backward: its backward):", 1e3 * meanStep))
        print("    " + pad("op", 26) + pad("calls", 8) + pad("forward", 11) + pad("backward", 11) + pad("total", 11) + "share")
        func row(_ name: String, _ calls: String, _ f: Double?, _ b: Double?, _ total: Double) {
            print("    " + pad(name, 26) + pad(calls, 8) + pad(f.map { String(format: "%.1f ms", 1e3 * $0) } ?? "", 11)
                  + pad(b.map { String(format: "%.1f ms", 1e3 * $0) } ?? "", 11) + pad(String(format: "%.1f ms", 1e3 * total), 11)
                  + String(format: "%.1f%%", 100 * total / max(meanStep, 1e-12)))
        }
        for t in times { row(t.op, String(format: "%.0f", t.callsPerStep), t.forwardSeconds, t.backwardSeconds, t.seconds) }
        row("(in no op)", "", nil, nil, meanStep - times.reduce(0) { $0 + $1.seconds })
    }
}
