// `espalier bench`: the reference workload of ../shared/bench (the same supernets, shapes and
// step), timed, with the accountant's peak by category, the process's peak RSS minus the RSS after
// build (the way the reference measures memory), the FLOPs the engine counted for one step and
// the achieved fraction of the machine's measured FMA peak. Figures only; never a test.

import EspalierCore
import EspalierHost
import Foundation

public struct BenchShape: Sendable, Equatable {
    /// `channels`: the images' channels; `c`: the supernet's initial channels (C); `cells`: its depth.
    public let name: String, batch: Int, channels: Int, height: Int, width: Int, c: Int, cells: Int
    public init(name: String, batch: Int, channels: Int, height: Int, width: Int, c: Int, cells: Int) {
        (self.name, self.batch, self.channels, self.height, self.width, self.c, self.cells) = (name, batch, channels, height, width, c, cells)
    }
    public static let all: [BenchShape] = [
        BenchShape(name: "small", batch: 32, channels: 1, height: 28, width: 28, c: 8, cells: 5),
        BenchShape(name: "fmnist", batch: 64, channels: 1, height: 28, width: 28, c: 16, cells: 8),
        BenchShape(name: "cifar", batch: 64, channels: 3, height: 32, width: 32, c: 16, cells: 8),
    ]

    /// This shape with `espalier bench`'s `--batch`, `--init-channels` and `--cells` in place of
    /// its own (nil: keep), for a sweep of how cost grows with size. The name stays the base
    /// shape's; the result records the values used. Refuses what the supernet cannot build, naming the flag.
    public func overriding(batch: Int? = nil, c: Int? = nil, cells: Int? = nil) throws -> BenchShape {
        if let batch {
            guard batch >= 1 else { throw EspalierError.config("--batch must be at least 1 (got \(batch)); give the images per step, e.g. --batch \(self.batch)") }
        }
        if let c {
            guard c >= 2, c <= SearchSpaceDescription.channelLimit else {
                throw EspalierError.config("--init-channels must be between 2 and \(SearchSpaceDescription.channelLimit) (got \(c)): it is the supernet's initial channels C, which reduction cells halve on their skip path; e.g. --init-channels \(self.c)")
            }
        }
        if let cells {
            guard cells >= 3, cells <= SearchSpaceDescription.cellLimit else {
                throw EspalierError.config("--cells must be between 3 and \(SearchSpaceDescription.cellLimit) (got \(cells)): the supernet reduces at cells/3 and 2·cells/3 and needs a normal cell before the first reduction; e.g. --cells \(self.cells)")
            }
        }
        return BenchShape(name: name, batch: batch ?? self.batch, channels: channels, height: height, width: width,
                          c: c ?? self.c, cells: cells ?? self.cells)
    }
}

/// One op's share of a step (`espalier bench --profile`): calls, forward and backward seconds, per step.
public struct OpTime: Codable, Sendable, Equatable {
    public var op: String
    public var callsPerStep: Double
    public var forwardSeconds: Double, backwardSeconds: Double
    public var seconds: Double { forwardSeconds + backwardSeconds }

    /// The entries of `profile` over `steps` steps, largest total first.
    public static func perStep(_ profile: OpProfile, steps: Int) -> [OpTime] {
        let n = Double(max(steps, 1))
        return profile.entries.map { op, e in
            OpTime(op: op, callsPerStep: Double(e.calls) / n, forwardSeconds: Double(e.forwardNanoseconds) / 1e9 / n,
                   backwardSeconds: Double(e.backwardNanoseconds) / 1e9 / n)
        }.sorted { ($0.seconds, $1.op) > ($1.seconds, $0.op) }
    }
}

public struct BenchResult: Codable, Sendable {
    public var variant: String, shape: String
    public var steps: Int
    public var medianSeconds: Double, minSeconds: Double
    public var flopsPerStep: Int
    public var gflops: Double
    public var fmaPeakGflops: Double
    /// The 16-lane AVX-512 FMA peak of the same cores where the CPU has AVX-512F (this build's
    /// kernels issue 8 lanes: `fmaPeakGflops`); nil elsewhere, and in results written before it.
    public var fmaPeak512Gflops: Double? = nil
    /// `wideClockPenalty` with 16-lane bursts where the CPU has AVX-512F: how many times as long
    /// 8-lane multiply-adds take right after 16-lane ones; nil elsewhere.
    public var fma8AfterWideRatio: Double? = nil
    public var peakBytes: Int
    /// The accountant's prediction of the same step (dataset included), as `espalier memory` makes it; nil for zeroshot.
    public var predictedPeakBytes: Int? = nil
    /// `--recompute` (none, ops, edges, cells).
    public var recompute = "none"
    public var peakByCategory: [String: Int]
    public var rssAfterBuildMiB: Double, peakRSSMiB: Double
    public var peakMinusBuildMiB: Double { peakRSSMiB - rssAfterBuildMiB }
    public var weights: Int
    /// Bytes at the accountant's peak by kind of owner: each candidate op summed over every edge
    /// ("op sep_conv_3x3"), cell preprocessing ("pre0"), stem, classifier, gates…, largest first.
    public var peakByOwnerKind: [String: Int] = [:]
    /// The buffer pool over the timed steps: allocations served from an idle buffer, new
    /// mappings, idle buffers unmapped to stay under the cap (see BufferPool.swift).
    public var poolHits = 0, poolMaps = 0, poolUnmaps = 0
    /// The size actually run (the shape's, or its `--batch`/`--init-channels`/`--cells` overrides):
    /// images per step, image channels × height × width, the supernet's C and cells. Optional so
    /// that results written before these fields decode.
    public var batch: Int? = nil, inChannels: Int? = nil, height: Int? = nil, width: Int? = nil, c: Int? = nil, cells: Int? = nil
    /// `--profile`: wall-clock time by op over the timed steps, per step, largest first (see
    /// OpProfile.swift), and the mean of those steps (what the ops' times add up to, with the time
    /// in no op); nil without it.
    public var opTimes: [OpTime]? = nil, opTimesMeanStepSeconds: Double? = nil
}

public enum SearchBench {
    public static let variants = ["darts", "masked", "zeroshot", "pcdarts", "gdas"]

    /// Resident set size now, from /proc/self/statm (MiB).
    public static func currentRSSMiB() -> Double {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
              let pages = text.split(separator: " ").dropFirst().first.flatMap({ Double($0) }) else { return 0 }
        return pages * Double(sysconf(Int32(_SC_PAGESIZE))) / 1048576
    }

    /// Peak resident set size of the process (MiB).
    public static func peakRSSMiB() -> Double {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Double(u.ru_maxrss) / 1024
    }

    /// Measured FMA throughput of `threads` cores (GFLOP/s): eight independent SIMD8 fused
    /// multiply-add chains, the widest this build issues (AVX2; Package.swift).
    public static func fmaPeak(threads: Int = Parallel.workers, seconds: Double = 0.3) -> Double {
        fmaPeak(threads: threads, seconds: seconds, flopsPerIteration: 8 * 8 * 2, kernel: fma8Chains)
    }

    /// Eight independent SIMD8 fused multiply-add chains a ← a·m + c, `iterations` times each;
    /// returns their sum, so that nothing is optimised away. The chains start at different values:
    /// equal ones are one chain to a compiler that notices (the latency of one multiply-add).
    @Sendable @inline(never) static func fma8Chains(_ iterations: Int) -> Float {
        var a0 = SIMD8<Float>(repeating: 1), a1 = a0 + 1, a2 = a0 + 2, a3 = a0 + 3, a4 = a0 + 4, a5 = a0 + 5, a6 = a0 + 6, a7 = a0 + 7
        let m = SIMD8<Float>(repeating: 0.999999), c = SIMD8<Float>(repeating: 1e-7)
        // Fused multiply-adds (one instruction each with AVX2/FMA code generation).
        for _ in 0..<iterations {
            a0 = c.addingProduct(a0, m); a1 = c.addingProduct(a1, m); a2 = c.addingProduct(a2, m); a3 = c.addingProduct(a3, m)
            a4 = c.addingProduct(a4, m); a5 = c.addingProduct(a5, m); a6 = c.addingProduct(a6, m); a7 = c.addingProduct(a7, m)
        }
        return (a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7).sum()
    }

    /// How many times as long the 8-lane chains (`fma8Chains`, about 4 µs a call) take on one core
    /// when a short burst of `wide` (about 1.5 µs of wider instructions) runs before each call, as
    /// against alone: the clock a core gives up for the wide instructions, which the code after
    /// them pays too. The best of three blocks each way, alternated. About 1 on a CPU that keeps
    /// its clock; this machine's Xeon measured 1.2 (the reason `Kernels.smallGemm` stays at 8 lanes).
    public static func wideClockPenalty(calls: Int = 2000, iterations: Int = 3_000, wideIterations: Int = 800,
                                        wide: (Int) -> Float) -> Double {
        var alone = Double.infinity, mixed = Double.infinity, sink: Float = 0
        for _ in 0..<3 {
            var t = DispatchTime.now().uptimeNanoseconds
            // Each call's count differs by one, so no call can be skipped as a repeat of the last.
            for i in 0..<calls { sink += fma8Chains(iterations + i & 1) }
            alone = min(alone, Double(DispatchTime.now().uptimeNanoseconds - t))
            var spent: UInt64 = 0
            for i in 0..<calls {
                sink += wide(wideIterations + i & 1)
                t = DispatchTime.now().uptimeNanoseconds
                sink += fma8Chains(iterations + i & 1)
                spent += DispatchTime.now().uptimeNanoseconds - t
            }
            mixed = min(mixed, Double(spent))
        }
        return sink.isNaN ? .nan : mixed / alone
    }

    /// The best of up to three timings (GFLOP/s) of `kernel(iterations)` run on `threads` cores at
    /// once, each doing `flopsPerIteration` per iteration; `kernel` returns a sum of its chains, so
    /// that nothing is optimised away (a NaN gives 0). Wide units need longer runs to reach their
    /// clock: give them more `iterations`.
    public static func fmaPeak(threads: Int = Parallel.workers, seconds: Double = 0.3, iterations: Int = 2_000_000,
                               flopsPerIteration: Int, kernel: @escaping @Sendable (Int) -> Float) -> Double {
        var best = 0.0
        for _ in 0..<3 {
            let t0 = DispatchTime.now().uptimeNanoseconds
            var sink = [Float](repeating: 0, count: threads)
            sink.withUnsafeMutableBufferPointer { out in
                let o = out.baseAddress!
                DispatchQueue.concurrentPerform(iterations: threads) { t in o[t] = kernel(iterations) }
            }
            let s = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            best = max(best, Double(threads * iterations * flopsPerIteration) / s / 1e9)
            if sink.contains(where: { $0.isNaN }) { best = 0 }
            if s > seconds { break }
        }
        return best
    }

    /// Builds the supernet of `variant` at `shape` and times `steps` steps after 2 warm-ups;
    /// `recompute`: what backward recomputes (a fixed level; auto needs a budget, see `search`).
    public static func run(variant: String, shape: BenchShape, steps: Int, registry: PluginRegistry, seed: UInt64 = 0,
                           recompute: RecomputeMode = .none, profile: Bool = false) throws -> BenchResult {
        guard variants.contains(variant) else {
            throw EspalierError.config("unknown bench variant '\(variant)'; the variants are \(variants.joined(separator: ", "))")
        }
        guard recompute != .auto else { throw EspalierError.config("bench takes a fixed --recompute level (none, ops, edges, cells); auto needs --memory-budget: use espalier memory or search") }
        var config = SearchConfig()
        switch variant {
        case "pcdarts":   // K = 4, 2×2 max-pool bypass on reduction edges, channel shuffle, β edge normalisation
            config.strategy = "espalier.strategy.pcdarts/1"
        case "gdas":      // one Gumbel sample per cell type per forward; only the sampled op runs
            config.strategy = "espalier.strategy.gdas/1"
            config.gate = "espalier.gate.gdas/1"
        default: break
        }
        config.space.channels = shape.c
        config.space.cells = shape.cells
        config.batchSize = shape.batch
        config.seed = seed
        config.epochs = 1
        config.recompute = recompute
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: seed)
        let data = try acc.withOwner("dataset") {
            try Dataset.synthetic(count: 2 * shape.batch, channels: shape.channels, height: shape.height, width: shape.width, classes: 10, seed: seed, accountant: acc)
        }
        let run = try SearchRun(config: config, registry: registry, context: context, train: data.all, outDirectory: nil)
        if variant == "masked" {
            // Keep each op with probability 0.5 (seed 0), at least one per edge; one mask per cell type.
            var rng = RNG(seed: 0)
            let k = config.space.ops.count
            for reduction in [false, true] {
                for e in 0..<config.space.edgesPerCell {
                    var keep = (0..<k).map { _ in rng.uniform() < 0.5 }
                    if !keep.contains(true) { keep[rng.int(k)] = true }
                    for o in 0..<k where !keep[o] { try run.supernet.setOpState(reduction: reduction, edge: e, op: o, .masked) }
                }
            }
        }
        let train = try run.trainLoader.nextCycling(accountant: acc), valid = try run.validLoader.nextCycling(accountant: acc)
        let rssAfterBuild = currentRSSMiB()
        func oneStep() throws {
            if variant == "zeroshot" {
                run.train(weights: false, arch: false)
                _ = try run.graph.noGrad { try run.lossAndGradients(train.images, train.labels, backward: false) }
            } else {
                try run.step(train: train, valid: valid)
            }
        }
        for _ in 0..<2 { try oneStep() }
        let opProfile = profile ? OpProfile() : nil
        run.graph.opProfile = opProfile
        defer { run.graph.opProfile = nil }
        acc.resetPeak()
        let pool0 = acc.poolCounters
        var times: [Double] = []
        let flops0 = run.graph.flops
        for _ in 0..<steps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try oneStep()
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        let flops = (run.graph.flops - flops0) / max(steps, 1)
        let opTimes = opProfile.map { OpTime.perStep($0, steps: steps) }
        times.sort()
        var peaks: [String: Int] = [:]
        for c in MemoryCategory.allCases { peaks[c.name] = acc.peakByCategory[c] }
        let median = times[times.count / 2]
        var kinds: [String: Int] = [:]
        for (name, bytes) in acc.peakByOwnerPrefix(depth: 16) {
            let parts = name.split(separator: "/").map(String.init)
            let kind: String
            if let e = parts.firstIndex(where: { $0.hasPrefix("edge") }), e + 1 < parts.count { kind = "op " + parts[e + 1] }
            else if let c = parts.firstIndex(where: { $0.hasPrefix("cell") }), c + 1 < parts.count { kind = "cell " + parts[c + 1] }
            else { kind = parts.prefix(2).joined(separator: "/") }
            kinds[kind, default: 0] += bytes.total
        }
        let peakRSS = peakRSSMiB()   // before the prediction's dry run (it allocates nothing, but builds a network)
        // The live run's own prediction (its masked candidates left out), the dataset added as the accountant counts it.
        let predicted = variant == "zeroshot" ? nil : try run.predictPeak(change: "{}").stepPeak + data.byteCount
        return BenchResult(variant: variant, shape: shape.name, steps: steps, medianSeconds: median, minSeconds: times[0],
                           flopsPerStep: flops, gflops: Double(flops) / median / 1e9, fmaPeakGflops: 0,
                           peakBytes: acc.peakTotal, predictedPeakBytes: predicted, recompute: recompute.rawValue, peakByCategory: peaks,
                           rssAfterBuildMiB: rssAfterBuild, peakRSSMiB: peakRSS,
                           weights: run.supernet.weightCount, peakByOwnerKind: kinds,
                           poolHits: acc.poolCounters.hits - pool0.hits, poolMaps: acc.poolCounters.maps - pool0.maps,
                           poolUnmaps: acc.poolCounters.unmaps - pool0.unmaps,
                           batch: shape.batch, inChannels: shape.channels, height: shape.height, width: shape.width,
                           c: shape.c, cells: shape.cells, opTimes: opTimes,
                           opTimesMeanStepSeconds: opTimes == nil ? nil : times.reduce(0, +) / Double(times.count))
    }
}
