// Kernel micro-benchmarks: GFLOP/s of the 1×1 (pointwise) and depthwise 3×3 convolution paths,
// forward and backward, next to OpenBLAS sgemm measured in the same run on the same problem
// size; and of the fused separable unit (SeparableUnit.swift) at each DARTS unit geometry. Used by
// `espalier kernel-bench`; never by tests (timings are not assertions).

import COpenBLAS
import Foundation

public struct KernelBenchRow: Codable, Sendable {
    public var name: String
    public var shape: String
    public var flops: Int
    public var bestSeconds: Double
    public var medianSeconds: Double
    public var gflops: Double { Double(flops) / bestSeconds / 1e9 }
    public var medianGflops: Double { Double(flops) / medianSeconds / 1e9 }
}

public enum KernelBench {
    /// Times `body` after one warm-up: at least `minReps` runs and `minSeconds` in all.
    public static func time(minReps: Int = 5, minSeconds: Double = 0.4, _ body: () -> Void) -> (best: Double, median: Double) {
        body()
        var times: [Double] = []
        let start = DispatchTime.now().uptimeNanoseconds
        while times.count < minReps || Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 < minSeconds {
            let t0 = DispatchTime.now().uptimeNanoseconds
            body()
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            if times.count > 10_000 { break }
        }
        times.sort()
        return (times[0], times[times.count / 2])
    }

    /// sgemm C(M×N) = A(M×K)·B(K×N) with OpenBLAS's own threads (`threads`).
    public static func sgemmRow(m: Int, n: Int, k: Int, threads: Int, label: String? = nil) -> KernelBenchRow {
        _ = Parallel.configureBLAS
        let a = UnsafeMutablePointer<Float>.allocate(capacity: m * k); defer { a.deallocate() }
        let b = UnsafeMutablePointer<Float>.allocate(capacity: k * n); defer { b.deallocate() }
        let c = UnsafeMutablePointer<Float>.allocate(capacity: m * n); defer { c.deallocate() }
        var rng = RNG(seed: 1)
        for i in 0..<(m * k) { a[i] = rng.uniform() }
        for i in 0..<(k * n) { b[i] = rng.uniform() }
        openblas_set_num_threads(Int32(threads))
        defer { openblas_set_num_threads(1) }
        let t = time { sgemm(transA: false, transB: false, m: m, n: n, k: k, alpha: 1, a: a, lda: k, b: b, ldb: n, beta: 0, c: c, ldc: n) }
        return KernelBenchRow(name: label ?? "sgemm (\(threads) thr)", shape: "M=\(m) N=\(n) K=\(k)", flops: 2 * m * n * k,
                              bestSeconds: t.best, medianSeconds: t.median)
    }

    /// Forward and backward (dX + dW) of one convolution geometry through the tuned path.
    public static func convRows(_ g: ConvGeometry, label: String) throws -> [KernelBenchRow] {
        let acc = MemoryAccountant()
        var rng = RNG(seed: 2)
        let x = try Tensor(shape: [g.n, g.cIn, g.h, g.w], category: .data, accountant: acc); x.fillUniform(bound: 1, rng: &rng)
        let w = try Tensor(shape: g.weightShape, category: .parameters, accountant: acc); w.fillUniform(bound: 1, rng: &rng)
        let y = try Tensor(shape: g.outputShape, category: .activations, accountant: acc)
        let dY = try Tensor(shape: g.outputShape, category: .activationGradients, accountant: acc); dY.fillUniform(bound: 1, rng: &rng)
        let dX = try Tensor(shape: x.shape, category: .activationGradients, accountant: acc)
        let dW = try Tensor.zeros(g.weightShape, category: .gradients, accountant: acc)
        let fws = try Tensor(shape: [max(1, g.forwardWorkspaceFloats())], category: .workspace, accountant: acc)
        let bws = try Tensor(shape: [max(1, g.backwardWorkspaceFloats(needInputGrad: true, needWeightGrad: true))],
                             category: .workspace, accountant: acc)
        let shape = "B=\(g.n) C=\(g.cIn)→\(g.cOut) \(g.h)×\(g.w) k\(g.kh)"
        let f = time { Kernels.conv2dForward(g, x: x.ptr, w: w.ptr, y: y.ptr, workspace: fws.ptr) }
        let b = time { Kernels.conv2dBackward(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: dX.ptr, dW: dW.ptr, workspace: bws.ptr) }
        return [KernelBenchRow(name: "\(label) forward", shape: shape, flops: g.forwardFlops, bestSeconds: f.best, medianSeconds: f.median),
                KernelBenchRow(name: "\(label) backward", shape: shape, flops: 2 * g.forwardFlops, bestSeconds: b.best, medianSeconds: b.median)]
    }

    /// The crossover of the 1×1 convolution's two GEMMs: per sample, one thread, forward
    /// (C × C)·(C × HW), input gradient (Cᵀ · dY) and weight gradient (dY · xᵀ), through our
    /// micro-kernels (Pointwise.swift) and through OpenBLAS on the same operands (the input
    /// gradient on wᵀ packed once per call, as the convolution runs it). Rows come in pairs,
    /// "own …" then "openblas …", for each channel count.
    public static func pointwiseCrossover(channels: [Int], hw: Int, samples: Int = 8) -> [KernelBenchRow] {
        _ = Parallel.configureBLAS
        var rows: [KernelBenchRow] = []
        for c in channels {
            let x = UnsafeMutablePointer<Float>.allocate(capacity: samples * c * hw); defer { x.deallocate() }
            let y = UnsafeMutablePointer<Float>.allocate(capacity: samples * c * hw); defer { y.deallocate() }
            let w = UnsafeMutablePointer<Float>.allocate(capacity: c * c); defer { w.deallocate() }
            let d = UnsafeMutablePointer<Float>.allocate(capacity: c * c); defer { d.deallocate() }
            var rng = RNG(seed: 3)
            for i in 0..<(samples * c * hw) { x[i] = rng.uniform() }
            for i in 0..<(c * c) { w[i] = rng.uniform(); d[i] = 0 }
            let flops = 2 * samples * c * c * hw, shape = "C=\(c) HW=\(hw) ×\(samples)"
            func row(_ name: String, _ body: () -> Void) {
                let t = time(minReps: 5, minSeconds: 0.2, body)
                rows.append(KernelBenchRow(name: name, shape: shape, flops: flops, bestSeconds: t.best, medianSeconds: t.median))
            }
            row("own forward") { for s in 0..<samples { Kernels.smallGemm(m: c, k: c, p: hw, a: w, b: x + s * c * hw, ldb: hw, c: y + s * c * hw, ldc: hw) } }
            row("openblas forward") {
                for s in 0..<samples { sgemm(transA: false, transB: false, m: c, n: hw, k: c, alpha: 1, a: w, lda: c, b: x + s * c * hw, ldb: hw, beta: 0, c: y + s * c * hw, ldc: hw) }
            }
            // The input gradient as the convolution runs it: wᵀ packed once per call, then one product per sample.
            let wt = UnsafeMutablePointer<Float>.allocate(capacity: c * c); defer { wt.deallocate() }
            row("own input grad") {
                Kernels.packTransposed(w, rows: c, cols: c, into: wt)
                for s in 0..<samples { Kernels.smallGemm(m: c, k: c, p: hw, a: wt, b: x + s * c * hw, ldb: hw, c: y + s * c * hw, ldc: hw) }
            }
            row("openblas input grad") {
                Kernels.packTransposed(w, rows: c, cols: c, into: wt)
                for s in 0..<samples { sgemm(transA: false, transB: false, m: c, n: hw, k: c, alpha: 1, a: wt, lda: c, b: x + s * c * hw, ldb: hw, beta: 0, c: y + s * c * hw, ldc: hw) }
            }
            row("own weight grad") { for s in 0..<samples { Kernels.smallGemmABt(m: c, n: c, p: hw, a: y + s * c * hw, lda: hw, b: x + s * c * hw, ldb: hw, d: d, ldd: c) } }
            row("openblas weight grad") {
                for s in 0..<samples { sgemm(transA: false, transB: true, m: c, n: c, k: hw, alpha: 1, a: y + s * c * hw, lda: hw, b: x + s * c * hw, ldb: hw, beta: 1, c: d, ldc: c) }
            }
        }
        return rows
    }

    /// The fused ReLU → depthwise → pointwise → batch-norm unit (SeparableUnit.swift), forward (t
    /// kept, statistics summed) and backward (dX, dWd, dWp), at every DARTS candidate's unit
    /// geometry: 3×3 and 5×5, dilation 1 and 2, stride 1 and (the reduction cells' first units)
    /// stride 2, C → C channels. FLOPs: the depthwise and pointwise multiply-adds, twice them
    /// backward (the batch norm's few per element are not counted).
    public static func separableUnitRows(batch: Int = 64, size: Int = 28, channels: [Int] = [16, 32, 64]) throws -> [KernelBenchRow] {
        var rows: [KernelBenchRow] = []
        for c in channels {
            for stride in [1, 2] {
                for (k, d) in [(3, 1), (5, 1), (3, 2), (5, 2)] {
                    let gd = ConvGeometry(n: batch, cIn: c, h: size, w: size, cOut: c, kh: k, kw: k, stride: stride,
                                          padding: d * (k - 1) / 2, dilation: d, groups: c)
                    guard gd.addsIntoInputGradient else { continue }   // the fused unit needs the depthwise fast path
                    rows += try separableUnitRows(gd, label: "separable \(k)x\(k)" + (d > 1 ? " d\(d)" : "") + (stride > 1 ? " s\(stride)" : ""))
                }
            }
        }
        return rows
    }

    /// One unit geometry (gd: the depthwise convolution, cOut = cIn): forward and backward rows.
    static func separableUnitRows(_ gd: ConvGeometry, label: String) throws -> [KernelBenchRow] {
        let acc = MemoryAccountant()
        var rng = RNG(seed: 4)
        let (n, c) = (gd.n, gd.cIn)
        func tensor(_ shape: [Int], _ category: MemoryCategory, fill: Bool = true) throws -> Tensor {
            let t = try Tensor(shape: shape, category: category, accountant: acc)
            if fill { t.fillUniform(bound: 1, rng: &rng) }
            return t
        }
        let x = try tensor([n, c, gd.h, gd.w], .data), wd = try tensor([c, 1, gd.kh, gd.kw], .parameters)
        let wp = try tensor([c, c, 1, 1], .parameters)
        let y = try tensor([n, c, gd.hOut, gd.wOut], .activations, fill: false), dY = try tensor([n, c, gd.hOut, gd.wOut], .activationGradients)
        let dX = try tensor([n, c, gd.h, gd.w], .activationGradients, fill: false)
        let dWd = try tensor([c, 1, gd.kh, gd.kw], .gradients, fill: false), dWp = try tensor([c, c, 1, 1], .gradients, fill: false)
        let bn = try tensor([3 * c], .workspace)                          // invStd, meanDy, meanDyXhat
        let sums = UnsafeMutablePointer<Double>.allocate(capacity: Kernels.pointwiseStatisticsDoubles(cOut: c, chunks: Parallel.chunkCount(n)))
        defer { sums.deallocate() }
        // As a training step runs it: t is not kept; the backward computes each t[s] again.
        let fws = try tensor([max(1, Kernels.separableUnitForwardFloats(gd, keepingT: false))], .workspace, fill: false)
        let bws = try tensor([max(1, Kernels.separableUnitBackwardFloats(gd, cOut: c, needInputGrad: true, needDepthwiseGrad: true,
                                                                         needPointwiseGrad: true, reluInput: true, keptT: false))], .workspace, fill: false)
        let shape = "B=\(n) C=\(c) \(gd.h)×\(gd.w)→\(gd.hOut)×\(gd.wOut)"
        let pointwise = ConvGeometry(n: n, cIn: c, h: gd.hOut, w: gd.wOut, cOut: c, kh: 1, kw: 1)
        let flops = gd.forwardFlops + pointwise.forwardFlops
        let f = time {
            Kernels.separableUnitForward(gd, cOut: c, x: x.ptr, wd: wd.ptr, wp: wp.ptr, t: nil, y: y.ptr, sums: sums, reluInput: true,
                                         workspace: fws.ptr)
        }
        let b = time {
            Kernels.separableUnitBackward(gd, cOut: c, x: x.ptr, wd: wd.ptr, t: nil, wp: wp.ptr, xhat: y.ptr, dY: dY.ptr, invStd: bn.ptr,
                                          meanDy: bn.ptr + c, meanDyXhat: bn.ptr + 2 * c, dX: dX.ptr, dWd: dWd.ptr, dWp: dWp.ptr,
                                          reluInput: true, workspace: bws.ptr)
        }
        return [KernelBenchRow(name: "\(label) forward", shape: shape, flops: flops, bestSeconds: f.best, medianSeconds: f.median),
                KernelBenchRow(name: "\(label) backward", shape: shape, flops: 2 * flops, bestSeconds: b.best, medianSeconds: b.median)]
    }

    /// The standard set: batch 64, 28×28, channels 16/32/64; the depthwise convolution at every
    /// DARTS candidate's geometry (3×3 and 5×5, dilation 1 and 2, and 3×3 at stride 2).
    public static func standard(batch: Int = 64, size: Int = 28, channels: [Int] = [16, 32, 64]) throws -> [KernelBenchRow] {
        var rows: [KernelBenchRow] = []
        for c in channels {
            let hw = size * size
            rows.append(sgemmRow(m: c, n: batch * hw, k: c, threads: Parallel.workers, label: "sgemm same size (\(Parallel.workers) thr)"))
            rows += try convRows(ConvGeometry(n: batch, cIn: c, h: size, w: size, cOut: c, kh: 1, kw: 1), label: "conv 1x1")
            rows += try convRows(ConvGeometry(n: batch, cIn: c, h: size, w: size, cOut: c, kh: 3, kw: 3, padding: 1, groups: c),
                                 label: "depthwise 3x3")
            rows += try convRows(ConvGeometry(n: batch, cIn: c, h: size, w: size, cOut: c, kh: 5, kw: 5, padding: 2, groups: c),
                                 label: "depthwise 5x5")
            rows += try convRows(ConvGeometry(n: batch, cIn: c, h: size, w: size, cOut: c, kh: 3, kw: 3, padding: 2, dilation: 2, groups: c),
                                 label: "depthwise 3x3 d2")
            rows += try convRows(ConvGeometry(n: batch, cIn: c, h: size, w: size, cOut: c, kh: 5, kw: 5, padding: 4, dilation: 2, groups: c),
                                 label: "depthwise 5x5 d2")
            rows += try convRows(ConvGeometry(n: batch, cIn: c, h: size, w: size, cOut: c, kh: 3, kw: 3, stride: 2, padding: 1, groups: c),
                                 label: "depthwise 3x3 s2")
        }
        rows.append(sgemmRow(m: 1024, n: 1024, k: 1024, threads: Parallel.workers, label: "sgemm 1024³ (\(Parallel.workers) thr)"))
        return rows
    }
}
