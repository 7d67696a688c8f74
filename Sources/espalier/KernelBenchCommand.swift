// `espalier kernel-bench`: GFLOP/s of the convolution kernels next to sgemm, measured in one run.

import ArgumentParser
import EspalierCore
import Foundation

struct KernelBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernel-bench",
        abstract: "Measure GFLOP/s of the 1×1 and depthwise convolution paths next to OpenBLAS sgemm, or of the fused separable unit.")

    @Option(help: "Batch size.") var batch = 64
    @Option(help: "Spatial size (H = W).") var size = 28
    @Option(help: "Comma-separated channel counts.") var channels = "16,32,64"
    @Flag(help: "Print JSON instead of a table.") var json = false
    @Flag(help: "The 1×1 convolution's crossover instead: our micro-kernels beside OpenBLAS per sample, one thread, at each --channels and --size.")
    var pointwise = false
    @Flag(help: "The fused separable unit (ReLU → depthwise → pointwise → batch norm) instead, forward and backward, at every DARTS candidate's unit geometry (3×3, 5×5, dilation 1 and 2, stride 1 and 2) at each --channels, --batch and --size.")
    var separable = false

    func run() throws {
        let cs = channels.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !cs.isEmpty, cs.allSatisfy({ $0 > 0 }) else { throw ValidationError("--channels needs positive integers, e.g. 16,32,64") }
        guard batch > 0, size > 0 else { throw ValidationError("--batch and --size must be positive (got \(batch), \(size))") }
        guard !(pointwise && separable) else { throw ValidationError("--pointwise and --separable are two different tables: give one") }
        let rows = pointwise ? KernelBench.pointwiseCrossover(channels: cs, hw: size * size)
            : separable ? try KernelBench.separableUnitRows(batch: batch, size: size, channels: cs)
            : try KernelBench.standard(batch: batch, size: size, channels: cs)
        if json {
            let enc = JSONEncoder(); enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try enc.encode(rows), as: UTF8.self))
            return
        }
        print("threads: \(Parallel.workers)")
        print(pad("kernel", 30) + pad("shape", 30) + pad("best ms", 10, left: true) + pad("GFLOP/s", 10, left: true) + pad("median", 10, left: true))
        var paired: Double = 0   // the figure the next row is compared with (sgemm of the same size, or our own kernel)
        for r in rows {
            var note = ""
            if r.name.hasPrefix("own ") { paired = r.gflops }
            else if r.name.hasPrefix("openblas "), paired > 0 { note = String(format: "  own is %.2f× OpenBLAS", paired / r.gflops) }
            else if r.name.hasPrefix("sgemm same") { paired = r.gflops }
            else if r.name.hasPrefix("conv 1x1"), paired > 0 { note = String(format: "  %.0f%% of sgemm", 100 * r.gflops / paired) }
            print(pad(r.name, 30) + pad(r.shape, 30) + pad(String(format: "%.3f", r.bestSeconds * 1000), 10, left: true)
                  + pad(String(format: "%.1f", r.gflops), 10, left: true) + pad(String(format: "%.1f", r.medianGflops), 10, left: true) + note)
        }
    }
}
