// 2-D convolution, NCHW, no bias: forward and backward side by side, three tuned paths and the
// naive reference they are tested against.
//   pointwise  1×1, stride 1, no padding, groups 1   → one GEMM per sample (ours or sgemm, Pointwise.swift)
//   depthwise  groups == Cin == Cout                 → padded planes, SIMD row gathers (Depthwise.swift)
//   im2col     everything else                       → im2col + sgemm per sample and group
// Work is split over the batch (forward, dX), over planes (depthwise forward) or channels (depthwise
// backward, so chunks never share a weight), one chunk per core.
// Backward overwrites dX and ADDS into dW, so a parameter's gradient can be passed directly.
// Buffers are owned by the caller; `workspaceFloats` says how much scratch each path needs.
// ReLU-fused input (`reluInput`: y = conv(relu(x), w), x the pre-ReLU input, relu(x) never
// stored) on the depthwise fast path (Depthwise.swift) and the pointwise path (a sample's relu(x)
// in a scratch plane where a product reads it; dX masked by x > 0 as it is stored) and im2col (the
// gather takes max(x, 0); dX masked after col2im); `supportsReLUInput`.
// A window (`ConvWindow`: y = conv(x[:, :, top..<top+height, left..<left+width], w), the crop
// never stored) on the im2col path: its gather reads the window in place, its col2im adds into
// the window of a dX the size of x (zero outside it), so the convolution of a crop costs no crop.
//
// Shapes: x (N, Cin, H, W) · w (Cout, Cin/groups, KH, KW) · y (N, Cout, Ho, Wo); with a window,
// Ho and Wo are those of the window's height and width, and dX is (N, Cin, H, W).

import Foundation

/// The part of each input plane a convolution reads: rows top..<top+height, columns
/// left..<left+width (a crop the convolution reads in place; padding pads the window).
public struct ConvWindow: Equatable, Hashable, Sendable {
    public var top, left, height, width: Int
    public init(top: Int, left: Int, height: Int, width: Int) { self.top = top; self.left = left; self.height = height; self.width = width }
}

public struct ConvGeometry: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var n, cIn, h, w: Int
    public var cOut, kh, kw: Int
    public var stride, padding, dilation, groups: Int
    /// nil: the whole plane.
    public var window: ConvWindow?

    public init(n: Int, cIn: Int, h: Int, w: Int, cOut: Int, kh: Int, kw: Int,
                stride: Int = 1, padding: Int = 0, dilation: Int = 1, groups: Int = 1, window: ConvWindow? = nil) {
        self.n = n; self.cIn = cIn; self.h = h; self.w = w
        self.cOut = cOut; self.kh = kh; self.kw = kw
        self.stride = stride; self.padding = padding; self.dilation = dilation; self.groups = groups
        self.window = window
    }

    /// The geometry of conv2d(x, w) from x's shape (N, Cin, H, W) and w's (Cout, Cin/groups, KH, KW);
    /// nil unless both are 4-D. Not validated (`validate`).
    public init?(input x: [Int], weight w: [Int], stride: Int = 1, padding: Int = 0, dilation: Int = 1, groups: Int = 1,
                 window: ConvWindow? = nil) {
        guard x.count == 4, w.count == 4 else { return nil }
        self.init(n: x[0], cIn: x[1], h: x[2], w: x[3], cOut: w[0], kh: w[2], kw: w[3], stride: stride, padding: padding,
                  dilation: dilation, groups: groups, window: window)
    }

    /// The height and width the convolution sees (the window's, else the plane's), and where the
    /// window starts in a plane (rows keep the plane's pitch `w`).
    public var inH: Int { window?.height ?? h }
    public var inW: Int { window?.width ?? w }
    var windowOffset: Int { window.map { $0.top * w + $0.left } ?? 0 }

    public var hOut: Int { (inH + 2 * padding - dilation * (kh - 1) - 1) / stride + 1 }
    public var wOut: Int { (inW + 2 * padding - dilation * (kw - 1) - 1) / stride + 1 }
    public var cInPerGroup: Int { cIn / groups }
    public var cOutPerGroup: Int { cOut / groups }
    public var weightShape: [Int] { [cOut, cInPerGroup, kh, kw] }
    public var outputShape: [Int] { [n, cOut, hOut, wOut] }
    /// Multiply-adds × 2 of the forward pass.
    public var forwardFlops: Int { 2 * n * cOut * hOut * wOut * cInPerGroup * kh * kw }

    public var description: String {
        "conv(\(n)x\(cIn)x\(h)x\(w)" + (window.map { " window [\($0.top)..<\($0.top + $0.height), \($0.left)..<\($0.left + $0.width)]" } ?? "")
            + " -> \(cOut), k\(kh)x\(kw) s\(stride) p\(padding) d\(dilation) g\(groups))"
    }

    /// Checks the geometry; returns a message naming the problem, or nil.
    public func validate() -> String? {
        if n <= 0 || cIn <= 0 || h <= 0 || w <= 0 || cOut <= 0 || kh <= 0 || kw <= 0 { return "sizes must be positive in \(self)" }
        if stride <= 0 || dilation <= 0 || padding < 0 || groups <= 0 { return "stride, dilation and groups must be positive and padding non-negative in \(self)" }
        if cIn % groups != 0 || cOut % groups != 0 { return "channels \(cIn)→\(cOut) are not divisible by groups \(groups)" }
        if let v = window, v.top < 0 || v.left < 0 || v.height <= 0 || v.width <= 0 || v.top + v.height > h || v.left + v.width > w {
            return "the window [\(v.top)..<\(v.top + v.height), \(v.left)..<\(v.left + v.width)] is not inside the \(h)×\(w) plane in \(self)"
        }
        if hOut <= 0 || wOut <= 0 { return "the kernel does not fit the input in \(self)" }
        return nil
    }

    public enum Algorithm: String, Sendable { case pointwise, depthwise, im2col }

    public var algorithm: Algorithm {
        if window != nil { return .im2col }   // the gather reads the window in place
        if kh == 1 && kw == 1 && stride == 1 && padding == 0 && groups == 1 { return .pointwise }
        if groups == cIn && cOut == cIn && groups > 1 { return .depthwise }
        return .im2col
    }

    /// Whether the kernels can take relu(x) from x themselves, forward and backward: the depthwise
    /// fast path; the pointwise one, which makes each sample's relu(x) in a scratch plane of its
    /// workspace just before a product reads it (forward, and backward for dW) and masks dX by
    /// x > 0 as it stores it; and im2col, whose gather takes max(x, 0) and whose dX is masked
    /// after its col2im. Not the direct depthwise loops (off the fast path).
    public var supportsReLUInput: Bool { onDepthwiseFastPath || algorithm != .depthwise }
    /// Whether the backward kernels can add dX to a gradient so far as they store it
    /// (`conv2dBackward`'s `dXAddend`): the depthwise fast path, and the pointwise path (each
    /// sample's dX made in a tile of its workspace, then added as it is stored).
    public var addsIntoInputGradient: Bool { onDepthwiseFastPath || algorithm == .pointwise }
    /// The depthwise kernels of Depthwise.swift (a plan exists for this geometry), which take both.
    var onDepthwiseFastPath: Bool { algorithm == .depthwise && DepthwisePlan(self) != nil }

    var colRows: Int { cInPerGroup * kh * kw }
    var colSize: Int { colRows * hOut * wOut * groups }   // one sample, all groups

    /// Scratch floats the forward pass needs, split over cores as the kernels split it (a chunk
    /// per worker over samples for im2col; disjoint plane chunks for depthwise).
    public func forwardWorkspaceFloats(reluInput: Bool = false) -> Int {
        switch algorithm {
        case .pointwise: return reluInput ? Parallel.disjointChunkCount(n) * cIn * h * w : 0   // a relu(x) plane per chunk
        case .depthwise: return depthwiseForwardFloats()
        case .im2col: return Parallel.chunkCount(n) * colSize
        }
    }

    /// Scratch floats the backward pass needs (columns, their gradient, per-chunk dW partials),
    /// split over cores as the kernels split it. `reluInput`: the depthwise path with ReLU fused
    /// into its input (see Depthwise.swift).
    public func backwardWorkspaceFloats(needInputGrad: Bool, needWeightGrad: Bool, reluInput: Bool = false) -> Int {
        let wCount = cOut * cInPerGroup * kh * kw, chunks = Parallel.chunkCount(n)
        switch algorithm {
        case .pointwise:
            // wᵀ and a dX tile per chunk; dW partials, and a relu(x) plane per chunk with reluInput.
            return (needInputGrad ? wCount + chunks * cIn * h * w : 0)
                + (needWeightGrad ? (chunks - 1) * wCount + (reluInput ? chunks * cIn * h * w : 0) : 0)
        case .depthwise:
            return depthwiseBackwardFloats(needInputGrad: needInputGrad, needWeightGrad: needWeightGrad, reluInput: reluInput)
        case .im2col:
            let perChunk = colSize * ((needInputGrad ? 1 : 0) + (needWeightGrad ? 1 : 0))
            return chunks * perChunk + (needWeightGrad ? (chunks - 1) * wCount : 0)
        }
    }
}

extension Kernels {
    // MARK: - Tuned paths

    /// y = conv(x, w). `workspace` must hold `g.forwardWorkspaceFloats(reluInput:)`.
    /// `reluInput` (y = conv(relu(x), w)) where `supportsReLUInput`.
    public static func conv2dForward(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                     y: UnsafeMutablePointer<Float>, workspace: UnsafeMutablePointer<Float>?, reluInput: Bool = false) {
        precondition(!reluInput || g.supportsReLUInput, "ReLU-fused input on \(g)")
        switch g.algorithm {
        case .pointwise: pointwiseForward(g, x: x, w: w, y: y, reluPlanes: reluInput ? workspace! : nil)
        case .depthwise: depthwiseForward(g, x: x, w: w, y: y, workspace: workspace, reluInput: reluInput)
        case .im2col: im2colForward(g, x: x, w: w, y: y, workspace: workspace!, reluInput: reluInput)
        }
    }

    /// dX = ∂/∂x (overwritten, if non-nil; dXAddend + ∂/∂x with `dXAddend`, which may be dX
    /// itself, only where `addsIntoInputGradient`); dW += ∂/∂w (if non-nil).
    public static func conv2dBackward(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                      dY: UnsafePointer<Float>, dX: UnsafeMutablePointer<Float>?,
                                      dW: UnsafeMutablePointer<Float>?, workspace: UnsafeMutablePointer<Float>?, reluInput: Bool = false,
                                      dXAddend: UnsafePointer<Float>? = nil) {
        precondition(!reluInput || g.supportsReLUInput, "ReLU-fused input on \(g)")
        precondition(dXAddend == nil || g.addsIntoInputGradient, "a dX addend on \(g)")
        switch g.algorithm {
        case .pointwise: pointwiseBackward(g, x: x, w: w, dY: dY, dX: dX, dW: dW, workspace: workspace, reluInput: reluInput, dXAddend: dXAddend)
        case .depthwise: depthwiseBackward(g, x: x, w: w, dY: dY, dX: dX, dW: dW, workspace: workspace, reluInput: reluInput, dXAddend: dXAddend)
        case .im2col: im2colBackward(g, x: x, w: w, dY: dY, dX: dX, dW: dW, workspace: workspace!, reluInput: reluInput)
        }
    }

    // MARK: pointwise (1×1) — one GEMM per sample (Pointwise.swift: ours below the crossover, else OpenBLAS)

    /// With `reluPlanes` (a cIn × HW plane per chunk of `Parallel.disjointChunkCount(n)`):
    /// y = conv(relu(x), w), each sample's relu(x) made in its chunk's plane while it is hot.
    static func pointwiseForward(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                                 reluPlanes: UnsafeMutablePointer<Float>? = nil) {
        let hw = g.h * g.w
        if let reluPlanes {
            let plane = g.cIn * hw
            Parallel.forChunksIndexed(g.n, chunks: Parallel.disjointChunkCount(g.n)) { k, r in
                let rx = reluPlanes + k * plane
                for s in r {
                    reluForward(x + s * plane, rx, count: plane)   // inside a chunk: runs on this thread
                    pointwiseSample(cIn: g.cIn, cOut: g.cOut, hw: hw, w: w, x: rx, y: y + s * g.cOut * hw)
                }
            }
            return
        }
        Parallel.forChunks(g.n) { r in
            // y[s] (Cout × HW) = w (Cout × Cin) · x[s] (Cin × HW)
            for s in r { pointwiseSample(cIn: g.cIn, cOut: g.cOut, hw: hw, w: w, x: x + s * g.cIn * hw, y: y + s * g.cOut * hw) }
        }
    }

    /// Workspace (`backwardWorkspaceFloats`): wᵀ (Cin × Cout) and a dX tile per chunk when dX is
    /// wanted; the dW partials of every chunk but the first, and with `reluInput` a relu(x) plane
    /// per chunk, when dW is. A sample's dX is stored straight where there is nothing to do to it;
    /// else it is made in the tile and stored as dXAddend + (x > 0 ? tile : 0) (mask with
    /// `reluInput`, addend where given; dXAddend may be dX itself): the floats the ReLU's backward
    /// and an accumulate of a separate dX made.
    static func pointwiseBackward(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, dY: UnsafePointer<Float>,
                                  dX: UnsafeMutablePointer<Float>?, dW: UnsafeMutablePointer<Float>?, workspace: UnsafeMutablePointer<Float>?,
                                  reluInput: Bool = false, dXAddend: UnsafePointer<Float>? = nil) {
        let hw = g.h * g.w, wCount = g.cOut * g.cIn, plane = g.cIn * hw
        let chunks = Parallel.chunkCount(g.n)
        // Layout: wᵀ, dX tiles (with dX); dW partials, relu(x) planes (with dW and reluInput).
        var next = workspace
        func take(_ floats: Int) -> UnsafeMutablePointer<Float>? { defer { next = next.map { $0 + floats } }; return next }
        let wt = dX == nil ? nil : take(wCount), tiles = dX == nil ? nil : take(chunks * plane)
        let partials = dW == nil ? nil : take((chunks - 1) * wCount)
        let reluPlanes = dW == nil || !reluInput ? nil : take(chunks * plane)
        if dX != nil { packTransposed(w, rows: g.cOut, cols: g.cIn, into: wt!) }
        if dW != nil, chunks > 1 { partials!.update(repeating: 0, count: (chunks - 1) * wCount) }
        let direct = !reluInput && dXAddend == nil
        Parallel.forChunksIndexed(g.n, chunks: chunks) { k, r in
            let dWk: UnsafeMutablePointer<Float>? = dW == nil ? nil : (k == 0 ? dW! : partials! + (k - 1) * wCount)
            for s in r {
                let xs = x + s * plane, dys = dY + s * g.cOut * hw
                if let dX {
                    // dX[s] (Cin × HW) = wᵀ (Cin × Cout) · dY[s] (Cout × HW), then masked and added as it is stored.
                    let out = dX + s * plane
                    if direct {
                        pointwiseSampleInputGrad(cIn: g.cIn, cOut: g.cOut, hw: hw, wt: wt!, dy: dys, dx: out)
                    } else {
                        let tile = tiles! + k * plane
                        pointwiseSampleInputGrad(cIn: g.cIn, cOut: g.cOut, hw: hw, wt: wt!, dy: dys, dx: tile)
                        storeInputGrad(tile, x: reluInput ? xs : nil, addend: dXAddend.map { $0 + s * plane }, into: out, count: plane)
                    }
                }
                // dW (Cout × Cin) += dY[s] (Cout × HW) · relu?(x[s])ᵀ (HW × Cin)
                if let dWk {
                    var xr = xs
                    if let reluPlanes {
                        let rx = reluPlanes + k * plane
                        reluForward(xs, rx, count: plane)   // inside a chunk: runs on this thread
                        xr = UnsafePointer(rx)
                    }
                    pointwiseSampleWeightGrad(cIn: g.cIn, cOut: g.cOut, hw: hw, dy: dys, x: xr, dw: dWk)
                }
            }
        }
        if let dW, chunks > 1 {
            for k in 1..<chunks { addInPlace(dW, partials! + (k - 1) * wCount, count: wCount) }
        }
    }

    /// out = addend + (x > 0 ? g : 0) (without x: g; without addend: the masked g alone): the
    /// floats of reluBackward's select followed by add's sum. `out` may be `addend`.
    static func storeInputGrad(_ g: UnsafePointer<Float>, x: UnsafePointer<Float>?, addend: UnsafePointer<Float>?,
                               into out: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        let zero = SIMD8<Float>()
        while i + 8 <= count {
            var v = load8(g + i)
            if let x { v = v.replacing(with: zero, where: .!(load8(x + i) .> zero)) }
            if let addend { v = load8(addend + i) + v }
            store8(out + i, v)
            i += 8
        }
        while i < count {
            var v = g[i]
            if let x { v = x[i] > 0 ? v : 0 }
            if let addend { v = addend[i] + v }
            out[i] = v
            i += 1
        }
    }

    // MARK: depthwise — the tuned path is in Depthwise.swift; these direct loops take any geometry
    // it does not (stride > 2, padding > dilation·(k−1) at stride 1, kernels over 64 taps).

    /// Output columns `ow` whose input column `ow·s − p + kj·d` lies in [0, W).
    @inline(__always)
    static func validRange(outSize: Int, inSize: Int, stride s: Int, offset: Int) -> Range<Int> {
        // input index = ow*s + offset, need 0 <= ow*s + offset <= inSize-1
        let lo = offset >= 0 ? 0 : (-offset + s - 1) / s
        let hiIncl = inSize - 1 - offset
        let hi = hiIncl < 0 ? 0 : min(outSize, hiIncl / s + 1)
        return lo..<max(lo, hi)
    }

    static func depthwiseForwardDirect(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let (ho, wo, s, p, d, kh, kw) = (g.hOut, g.wOut, g.stride, g.padding, g.dilation, g.kh, g.kw)
        let planes = g.n * g.cIn
        Parallel.forChunks(planes) { r in
            for plane in r {
                let c = plane % g.cIn
                let xp = x + plane * g.h * g.w, yp = y + plane * ho * wo, wp = w + c * kh * kw
                yp.update(repeating: 0, count: ho * wo)
                for oh in 0..<ho {
                    let yrow = yp + oh * wo
                    for ki in 0..<kh {
                        let ih = oh * s - p + ki * d
                        if ih < 0 || ih >= g.h { continue }
                        let xrow = xp + ih * g.w
                        for kj in 0..<kw {
                            let wv = wp[ki * kw + kj], off = kj * d - p
                            let rng = validRange(outSize: wo, inSize: g.w, stride: s, offset: off)
                            if s == 1 {
                                let src = xrow + off
                                for ow in rng { yrow[ow] += wv * src[ow] }
                            } else {
                                for ow in rng { yrow[ow] += wv * xrow[ow * s + off] }
                            }
                        }
                    }
                }
            }
        }
    }

    static func depthwiseBackwardDirect(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, dY: UnsafePointer<Float>,
                                        dX: UnsafeMutablePointer<Float>?, dW: UnsafeMutablePointer<Float>?) {
        let (ho, wo, s, p, d, kh, kw) = (g.hOut, g.wOut, g.stride, g.padding, g.dilation, g.kh, g.kw)
        if let dX {
            // Scatter: dX[ih, ow·s + off] += w · dY[oh, ow]; planes are independent.
            Parallel.forChunks(g.n * g.cIn) { r in
                for plane in r {
                    let c = plane % g.cIn
                    let dxp = dX + plane * g.h * g.w, dyp = dY + plane * ho * wo, wp = w + c * kh * kw
                    dxp.update(repeating: 0, count: g.h * g.w)
                    for oh in 0..<ho {
                        let dyrow = dyp + oh * wo
                        for ki in 0..<kh {
                            let ih = oh * s - p + ki * d
                            if ih < 0 || ih >= g.h { continue }
                            let dxrow = dxp + ih * g.w
                            for kj in 0..<kw {
                                let wv = wp[ki * kw + kj], off = kj * d - p
                                let rng = validRange(outSize: wo, inSize: g.w, stride: s, offset: off)
                                if s == 1 {
                                    let dst = dxrow + off
                                    for ow in rng { dst[ow] += wv * dyrow[ow] }
                                } else {
                                    for ow in rng { dxrow[ow * s + off] += wv * dyrow[ow] }
                                }
                            }
                        }
                    }
                }
            }
        }
        if let dW {
            // dW[c, ki, kj] += Σ_n Σ_oh Σ_ow dY · x ; split over channels so chunks never share a weight.
            Parallel.forChunks(g.cIn) { r in
                for c in r {
                    let wp = dW + c * kh * kw
                    for ki in 0..<kh {
                        for kj in 0..<kw {
                            let off = kj * d - p
                            let rng = validRange(outSize: wo, inSize: g.w, stride: s, offset: off)
                            var acc: Float = 0
                            for sample in 0..<g.n {
                                let plane = sample * g.cIn + c
                                let xp = x + plane * g.h * g.w, dyp = dY + plane * ho * wo
                                for oh in 0..<ho {
                                    let ih = oh * s - p + ki * d
                                    if ih < 0 || ih >= g.h { continue }
                                    let xrow = xp + ih * g.w, dyrow = dyp + oh * wo
                                    var rowAcc: Float = 0
                                    if s == 1 {
                                        let src = xrow + off
                                        for ow in rng { rowAcc += dyrow[ow] * src[ow] }
                                    } else {
                                        for ow in rng { rowAcc += dyrow[ow] * xrow[ow * s + off] }
                                    }
                                    acc += rowAcc
                                }
                            }
                            wp[ki * kw + kj] += acc
                        }
                    }
                }
            }
        }
    }

    // MARK: im2col + sgemm

    /// col (Cin·KH·KW, Ho·Wo) from one sample x (Cin, H, W) (its window, if any); zero where the
    /// kernel is off the image (or the window).
    /// col = im2col(relu?(x)): with `relu`, each value gathered is max(x, 0), the floats of relu(x).
    static func im2col(_ g: ConvGeometry, x: UnsafePointer<Float>, col: UnsafeMutablePointer<Float>, relu: Bool = false) {
        let (ho, wo, s, p, d) = (g.hOut, g.wOut, g.stride, g.padding, g.dilation)
        var row = 0
        for c in 0..<g.cIn {
            let xp = x + c * g.h * g.w + g.windowOffset
            for ki in 0..<g.kh {
                for kj in 0..<g.kw {
                    let dst = col + row * ho * wo
                    let off = kj * d - p
                    let rng = validRange(outSize: wo, inSize: g.inW, stride: s, offset: off)
                    for oh in 0..<ho {
                        let ih = oh * s - p + ki * d
                        let drow = dst + oh * wo
                        if ih < 0 || ih >= g.inH { drow.update(repeating: 0, count: wo); continue }
                        let xrow = xp + ih * g.w
                        for ow in 0..<rng.lowerBound { drow[ow] = 0 }
                        if relu {
                            for ow in rng { drow[ow] = max(xrow[ow * s + off], 0) }
                        } else if s == 1 {
                            for ow in rng { drow[ow] = xrow[ow + off] }
                        } else {
                            for ow in rng { drow[ow] = xrow[ow * s + off] }
                        }
                        for ow in rng.upperBound..<wo { drow[ow] = 0 }
                    }
                    row += 1
                }
            }
        }
    }

    /// dx (Cin, H, W) = col2im(dcol); overwrites dx (zero outside the window, if any).
    static func col2im(_ g: ConvGeometry, col: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>) {
        let (ho, wo, s, p, d) = (g.hOut, g.wOut, g.stride, g.padding, g.dilation)
        dx.update(repeating: 0, count: g.cIn * g.h * g.w)
        var row = 0
        for c in 0..<g.cIn {
            let xp = dx + c * g.h * g.w + g.windowOffset
            for ki in 0..<g.kh {
                for kj in 0..<g.kw {
                    let src = col + row * ho * wo
                    let off = kj * d - p
                    let rng = validRange(outSize: wo, inSize: g.inW, stride: s, offset: off)
                    for oh in 0..<ho {
                        let ih = oh * s - p + ki * d
                        if ih < 0 || ih >= g.inH { continue }
                        let xrow = xp + ih * g.w, srow = src + oh * wo
                        if s == 1 { for ow in rng { xrow[ow + off] += srow[ow] } }
                        else { for ow in rng { xrow[ow * s + off] += srow[ow] } }
                    }
                    row += 1
                }
            }
        }
    }

    static func im2colForward(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                              y: UnsafeMutablePointer<Float>, workspace: UnsafeMutablePointer<Float>, reluInput: Bool = false) {
        let hwo = g.hOut * g.wOut, rows = g.colRows, cog = g.cOutPerGroup
        let chunks = Parallel.chunkCount(g.n)
        Parallel.forChunksIndexed(g.n, chunks: chunks) { k, r in
            let col = workspace + k * g.colSize
            for s in r {
                im2col(g, x: x + s * g.cIn * g.h * g.w, col: col, relu: reluInput)
                for grp in 0..<g.groups {
                    // y[s, grp] (Cout/g × HoWo) = w[grp] (Cout/g × rows) · col[grp] (rows × HoWo)
                    sgemm(transA: false, transB: false, m: cog, n: hwo, k: rows, alpha: 1,
                          a: w + grp * cog * rows, lda: rows, b: col + grp * rows * hwo, ldb: hwo,
                          beta: 0, c: y + (s * g.cOut + grp * cog) * hwo, ldc: hwo)
                }
            }
        }
    }

    /// With `reluInput`: the columns of relu(x) for dW, and dX masked by x > 0 after its col2im
    /// (the floats of the ReLU's backward of the convolution's dX).
    static func im2colBackward(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, dY: UnsafePointer<Float>,
                               dX: UnsafeMutablePointer<Float>?, dW: UnsafeMutablePointer<Float>?, workspace: UnsafeMutablePointer<Float>,
                               reluInput: Bool = false) {
        let hwo = g.hOut * g.wOut, rows = g.colRows, cog = g.cOutPerGroup
        let chunks = Parallel.chunkCount(g.n)
        let wCount = g.cOut * rows
        let perChunk = g.colSize * ((dX != nil ? 1 : 0) + (dW != nil ? 1 : 0))
        let partials = workspace + chunks * perChunk
        if dW != nil, chunks > 1 { partials.update(repeating: 0, count: (chunks - 1) * wCount) }
        Parallel.forChunksIndexed(g.n, chunks: chunks) { k, r in
            var scratch = workspace + k * perChunk
            let col: UnsafeMutablePointer<Float>? = dW != nil ? scratch : nil
            if dW != nil { scratch += g.colSize }
            let dcol: UnsafeMutablePointer<Float>? = dX != nil ? scratch : nil
            let dWk: UnsafeMutablePointer<Float>? = dW == nil ? nil : (k == 0 ? dW! : partials + (k - 1) * wCount)
            for s in r {
                let dys = dY + s * g.cOut * hwo
                if let col, let dWk {
                    im2col(g, x: x + s * g.cIn * g.h * g.w, col: col, relu: reluInput)
                    for grp in 0..<g.groups {
                        // dW[grp] (Cout/g × rows) += dY[s, grp] (Cout/g × HoWo) · col[grp]ᵀ
                        sgemm(transA: false, transB: true, m: cog, n: rows, k: hwo, alpha: 1,
                              a: dys + grp * cog * hwo, lda: hwo, b: col + grp * rows * hwo, ldb: hwo,
                              beta: 1, c: dWk + grp * cog * rows, ldc: rows)
                    }
                }
                if let dcol, let dX {
                    for grp in 0..<g.groups {
                        // dcol[grp] (rows × HoWo) = w[grp]ᵀ (rows × Cout/g) · dY[s, grp]
                        sgemm(transA: true, transB: false, m: rows, n: hwo, k: cog, alpha: 1,
                              a: w + grp * cog * rows, lda: rows, b: dys + grp * cog * hwo, ldb: hwo,
                              beta: 0, c: dcol + grp * rows * hwo, ldc: hwo)
                    }
                    let plane = g.cIn * g.h * g.w, dXs = dX + s * plane
                    col2im(g, col: dcol, dx: dXs)
                    if reluInput { storeInputGrad(dXs, x: x + s * plane, addend: nil, into: dXs, count: plane) }
                }
            }
        }
        if let dW, chunks > 1 {
            for k in 1..<chunks { addInPlace(dW, partials + (k - 1) * wCount, count: wCount) }
        }
    }

    // MARK: - Naive reference (tests compare every tuned path against these)

    public static func conv2dForwardNaive(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let (ho, wo) = (g.hOut, g.wOut), (top, left) = (g.window?.top ?? 0, g.window?.left ?? 0)
        for s in 0..<g.n {
            for oc in 0..<g.cOut {
                let grp = oc / g.cOutPerGroup
                for oh in 0..<ho {
                    for ow in 0..<wo {
                        var acc: Double = 0
                        for icg in 0..<g.cInPerGroup {
                            let ic = grp * g.cInPerGroup + icg
                            for ki in 0..<g.kh {
                                for kj in 0..<g.kw {
                                    let ih = oh * g.stride - g.padding + ki * g.dilation
                                    let iw = ow * g.stride - g.padding + kj * g.dilation
                                    if ih < 0 || ih >= g.inH || iw < 0 || iw >= g.inW { continue }
                                    acc += Double(x[((s * g.cIn + ic) * g.h + top + ih) * g.w + left + iw])
                                        * Double(w[((oc * g.cInPerGroup + icg) * g.kh + ki) * g.kw + kj])
                                }
                            }
                        }
                        y[((s * g.cOut + oc) * ho + oh) * wo + ow] = Float(acc)
                    }
                }
            }
        }
    }

    /// dX overwritten, dW accumulated — the same contract as the tuned paths.
    public static func conv2dBackwardNaive(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, dY: UnsafePointer<Float>,
                                           dX: UnsafeMutablePointer<Float>?, dW: UnsafeMutablePointer<Float>?) {
        let (ho, wo) = (g.hOut, g.wOut), (top, left) = (g.window?.top ?? 0, g.window?.left ?? 0)
        dX?.update(repeating: 0, count: g.n * g.cIn * g.h * g.w)
        for s in 0..<g.n {
            for oc in 0..<g.cOut {
                let grp = oc / g.cOutPerGroup
                for oh in 0..<ho {
                    for ow in 0..<wo {
                        let dy = dY[((s * g.cOut + oc) * ho + oh) * wo + ow]
                        for icg in 0..<g.cInPerGroup {
                            let ic = grp * g.cInPerGroup + icg
                            for ki in 0..<g.kh {
                                for kj in 0..<g.kw {
                                    let ih = oh * g.stride - g.padding + ki * g.dilation
                                    let iw = ow * g.stride - g.padding + kj * g.dilation
                                    if ih < 0 || ih >= g.inH || iw < 0 || iw >= g.inW { continue }
                                    let xi = ((s * g.cIn + ic) * g.h + top + ih) * g.w + left + iw
                                    let wi = ((oc * g.cInPerGroup + icg) * g.kh + ki) * g.kw + kj
                                    dX?[xi] += w[wi] * dy
                                    dW?[wi] += x[xi] * dy
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
