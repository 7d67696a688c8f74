// Pooling, NCHW: max k×k, average k×k, global average. Forward and backward side by side, each
// with the naive reference it is tested against. Floor-mode output size (PyTorch's default).
//   max      padding counts as −∞; backward recomputes the argmax from the input (no index
//            buffer). Ties: the first maximum in row-major window order wins, in both passes.
//            NaN propagates as in PyTorch.
//   average  divisor = in-image elements of the window (count_include_pad=False) or k·k.
//            Backward needs no saved tensor.
//   global   (N, C, H, W) → (N, C), the mean of each plane.
// Planes (sample, channel) are independent: the tuned paths split them across cores and clip
// each window to the image once instead of testing every tap. Backward overwrites dX.

import Foundation

public struct PoolGeometry: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var n, c, h, w: Int
    public var k, stride, padding: Int

    public init(n: Int, c: Int, h: Int, w: Int, k: Int, stride: Int, padding: Int = 0) {
        self.n = n; self.c = c; self.h = h; self.w = w
        self.k = k; self.stride = stride; self.padding = padding
    }

    public var hOut: Int { (h + 2 * padding - k) / stride + 1 }
    public var wOut: Int { (w + 2 * padding - k) / stride + 1 }
    public var inputShape: [Int] { [n, c, h, w] }
    public var outputShape: [Int] { [n, c, hOut, wOut] }
    var planes: Int { n * c }

    public var description: String { "pool(\(n)x\(c)x\(h)x\(w), k\(k) s\(stride) p\(padding))" }

    /// Checks the geometry (PyTorch's rules: padding at most k/2); returns the problem, or nil.
    public func validate() -> String? {
        if n <= 0 || c <= 0 || h <= 0 || w <= 0 || k <= 0 { return "sizes must be positive in \(self)" }
        if stride <= 0 || padding < 0 { return "stride must be positive and padding non-negative in \(self)" }
        if 2 * padding > k { return "padding must be at most half the kernel size in \(self)" }
        if h + 2 * padding < k || w + 2 * padding < k { return "the window does not fit the input in \(self)" }
        return nil
    }

    /// The in-image rows (or columns) of the window at output position `o`.
    @inline(__always)
    func window(_ o: Int, size: Int) -> Range<Int> {
        let start = o * stride - padding
        return max(start, 0)..<min(start + k, size)
    }
}

extension Kernels {
    /// Runs `body(i)` for i in 0..<count, split across cores when the work (count·itemSize) is large.
    @inline(__always)
    static func forItems(_ count: Int, itemSize: Int, _ body: (Int) -> Void) {
        let grain = max(1, parallelGrain / max(itemSize, 1))
        Parallel.forChunks(count, grain: grain) { r in for i in r { body(i) } }
    }

    // MARK: - Max pool

    /// y = maxpool(x): x (N, C, H, W) → y (N, C, Ho, Wo).
    /// Window max of output (oh, ow) and its first arg-max (row-major), NaN passing through.
    @inline(__always)
    static func maxPoolWindow(_ g: PoolGeometry, _ xp: UnsafePointer<Float>, _ oh: Int, _ ow: Int) -> (Float, Int) {
        let rows = g.window(oh, size: g.h), cols = g.window(ow, size: g.w)
        var best = -Float.infinity
        var arg = rows.lowerBound * g.w + cols.lowerBound
        for ih in rows {
            let xrow = xp + ih * g.w
            for iw in cols {
                let v = xrow[iw]
                if v > best || v.isNaN { best = v; arg = ih * g.w + iw }
            }
        }
        return (best, arg)
    }

    /// max(a, b) that lets NaN through (any NaN operand gives NaN), without a branch.
    @inline(__always)
    static func nanMax(_ a: Float, _ b: Float) -> Float { (b > a || b != b) ? b : a }

    /// Output columns whose 3×3 window (padding 1) lies fully inside a row of width w.
    @inline(__always)
    static func interior3x3(_ g: PoolGeometry, out: Int, size: Int) -> Range<Int> {
        // window start = o·s − 1 ≥ 0 and o·s + 1 ≤ size − 1
        let lo = (1 + g.stride - 1) / g.stride
        let hi = min(out, (size - 2) / g.stride + 1)
        return lo..<max(lo, hi)
    }

    /// y = max over each k×k window (padding counts as −∞). 3×3 windows with padding 1 take an
    /// unrolled path inside the image; borders and other sizes the general one.
    public static func maxPool2dForward(_ g: PoolGeometry, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let (ho, wo, hw) = (g.hOut, g.wOut, g.h * g.w)
        let fast = g.k == 3 && g.padding == 1
        let rowsIn = fast ? interior3x3(g, out: ho, size: g.h) : 0..<0
        let colsIn = fast ? interior3x3(g, out: wo, size: g.w) : 0..<0
        forItems(g.planes, itemSize: hw * 2) { plane in
            let xp = x + plane * hw, yp = y + plane * ho * wo
            for oh in 0..<ho {
                let yrow = yp + oh * wo
                if rowsIn.contains(oh) && !colsIn.isEmpty {
                    let r0 = xp + (oh * g.stride - 1) * g.w, r1 = r0 + g.w, r2 = r1 + g.w
                    if g.stride == 1 {
                        // Separable: vertical max of the three rows into y, then horizontal max in place.
                        for j in 0..<g.w { yrow[j] = nanMax(nanMax(r0[j], r1[j]), r2[j]) }
                        var prev = yrow[colsIn.lowerBound - 1]
                        for ow in colsIn {
                            let cur = yrow[ow]
                            yrow[ow] = nanMax(nanMax(prev, cur), yrow[ow + 1])
                            prev = cur
                        }
                    } else {
                        for ow in colsIn {
                            let c = ow * g.stride - 1
                            yrow[ow] = nanMax(nanMax(nanMax(r0[c], r0[c + 1]), nanMax(r0[c + 2], r1[c])),
                                              nanMax(nanMax(nanMax(r1[c + 1], r1[c + 2]), nanMax(r2[c], r2[c + 1])), r2[c + 2]))
                        }
                    }
                    // Borders last: the stride-1 pass above used y as scratch for the column maxima.
                    for ow in 0..<colsIn.lowerBound { yrow[ow] = maxPoolWindow(g, xp, oh, ow).0 }
                    for ow in colsIn.upperBound..<wo { yrow[ow] = maxPoolWindow(g, xp, oh, ow).0 }
                } else {
                    for ow in 0..<wo { yrow[ow] = maxPoolWindow(g, xp, oh, ow).0 }
                }
            }
        }
    }

    /// Max-pool 3×3, stride 1, padding 1 backward, separably: each input row's 3-wide (max, first
    /// arg-max) once, then 2 comparisons per output across its three rows. The same first-maximum
    /// (row-major) and NaN rules as the general path.
    static func maxPool3x3Stride1Backward(_ g: PoolGeometry, x: UnsafePointer<Float>, dY: UnsafePointer<Float>,
                                          dX: UnsafeMutablePointer<Float>, rowsIn: Range<Int>, colsIn: Range<Int>) {
        let (ho, wo, w, hw) = (g.hOut, g.wOut, g.w, g.h * g.w)
        forItems(g.planes, itemSize: hw * 2) { plane in
            let xp = x + plane * hw, dyp = dY + plane * ho * wo, dxp = dX + plane * hw
            dxp.update(repeating: 0, count: hw)
            withUnsafeTemporaryAllocation(of: Float.self, capacity: hw) { hmBuf in
                withUnsafeTemporaryAllocation(of: Int32.self, capacity: hw) { haBuf in
                    let hm = hmBuf.baseAddress!, ha = haBuf.baseAddress!
                    // Row maxima over columns c..c+2 (c = ow − 1) for the interior columns.
                    for r in 0..<g.h {
                        let xr = xp + r * w, mr = hm + r * w, ar = ha + r * w
                        for ow in colsIn {
                            let c = ow - 1
                            var m = xr[c], a = Int32(c)
                            let v1 = xr[c + 1], t1 = v1 > m || v1 != v1
                            m = t1 ? v1 : m; a = t1 ? Int32(c + 1) : a
                            let v2 = xr[c + 2], t2 = v2 > m || v2 != v2
                            m = t2 ? v2 : m; a = t2 ? Int32(c + 2) : a
                            mr[ow] = m; ar[ow] = a
                        }
                    }
                    for oh in 0..<ho {
                        let dyrow = dyp + oh * wo
                        if rowsIn.contains(oh) {
                            let top = oh - 1
                            for ow in 0..<colsIn.lowerBound { dxp[maxPoolWindow(g, xp, oh, ow).1] += dyrow[ow] }
                            for ow in colsIn {
                                var m = hm[top * w + ow], a = top * w + Int(ha[top * w + ow])
                                let m1 = hm[(top + 1) * w + ow], t1 = m1 > m || m1 != m1
                                m = t1 ? m1 : m; a = t1 ? (top + 1) * w + Int(ha[(top + 1) * w + ow]) : a
                                let m2 = hm[(top + 2) * w + ow], t2 = m2 > m || m2 != m2
                                a = t2 ? (top + 2) * w + Int(ha[(top + 2) * w + ow]) : a
                                dxp[a] += dyrow[ow]
                            }
                            for ow in colsIn.upperBound..<wo { dxp[maxPoolWindow(g, xp, oh, ow).1] += dyrow[ow] }
                        } else {
                            for ow in 0..<wo { dxp[maxPoolWindow(g, xp, oh, ow).1] += dyrow[ow] }
                        }
                    }
                }
            }
        }
    }

    /// dX[argmax] += dY for each window (overwrites dX first); the arg-max is recomputed from x.
    public static func maxPool2dBackward(_ g: PoolGeometry, x: UnsafePointer<Float>, dY: UnsafePointer<Float>, dX: UnsafeMutablePointer<Float>) {
        let (ho, wo, hw) = (g.hOut, g.wOut, g.h * g.w)
        let fast = g.k == 3 && g.padding == 1
        let rowsIn = fast ? interior3x3(g, out: ho, size: g.h) : 0..<0
        let colsIn = fast ? interior3x3(g, out: wo, size: g.w) : 0..<0
        if fast && g.stride == 1 && !colsIn.isEmpty && !rowsIn.isEmpty {
            maxPool3x3Stride1Backward(g, x: x, dY: dY, dX: dX, rowsIn: rowsIn, colsIn: colsIn)
            return
        }
        forItems(g.planes, itemSize: hw * 2) { plane in
            let xp = x + plane * hw, dyp = dY + plane * ho * wo, dxp = dX + plane * hw
            dxp.update(repeating: 0, count: hw)
            for oh in 0..<ho {
                let dyrow = dyp + oh * wo
                if rowsIn.contains(oh) && !colsIn.isEmpty {
                    let top = (oh * g.stride - 1) * g.w
                    let r0 = xp + top, r1 = r0 + g.w, r2 = r1 + g.w
                    for ow in 0..<colsIn.lowerBound { dxp[maxPoolWindow(g, xp, oh, ow).1] += dyrow[ow] }
                    for ow in colsIn {
                        let c = ow * g.stride - 1
                        var m = r0[c], arg = c
                        @inline(__always) func take(_ v: Float, _ i: Int) {
                            let t = v > m || v != v
                            m = t ? v : m
                            arg = t ? i : arg
                        }
                        take(r0[c + 1], c + 1); take(r0[c + 2], c + 2)
                        take(r1[c], g.w + c); take(r1[c + 1], g.w + c + 1); take(r1[c + 2], g.w + c + 2)
                        take(r2[c], 2 * g.w + c); take(r2[c + 1], 2 * g.w + c + 1); take(r2[c + 2], 2 * g.w + c + 2)
                        dxp[top + arg] += dyrow[ow]
                    }
                    for ow in colsIn.upperBound..<wo { dxp[maxPoolWindow(g, xp, oh, ow).1] += dyrow[ow] }
                } else {
                    for ow in 0..<wo { dxp[maxPoolWindow(g, xp, oh, ow).1] += dyrow[ow] }
                }
            }
        }
    }

    // MARK: - Average pool

    /// y = avgpool(x). Divisor: in-image elements (countIncludePad false) or k·k.
    public static func avgPool2dForward(_ g: PoolGeometry, countIncludePad: Bool, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let (ho, wo, hw) = (g.hOut, g.wOut, g.h * g.w)
        if g.k == 3 && g.padding == 1 { return avgPool3x3Forward(g, countIncludePad: countIncludePad, x: x, y: y) }
        forItems(g.planes, itemSize: hw * 2) { plane in
            let xp = x + plane * hw, yp = y + plane * ho * wo
            for oh in 0..<ho {
                let rows = g.window(oh, size: g.h)
                for ow in 0..<wo {
                    let cols = g.window(ow, size: g.w)
                    var s: Float = 0
                    for ih in rows {
                        let xrow = xp + ih * g.w
                        for iw in cols { s += xrow[iw] }
                    }
                    let divisor = countIncludePad ? g.k * g.k : rows.count * cols.count
                    yp[oh * wo + ow] = s / Float(divisor)
                }
            }
        }
    }

    /// dX = ∂/∂x (overwritten): each dY spread evenly over the elements its window divided by.
    public static func avgPool2dBackward(_ g: PoolGeometry, countIncludePad: Bool, dY: UnsafePointer<Float>, dX: UnsafeMutablePointer<Float>) {
        let (ho, wo, hw) = (g.hOut, g.wOut, g.h * g.w)
        if g.k == 3 && g.padding == 1 { return avgPool3x3Backward(g, countIncludePad: countIncludePad, dY: dY, dX: dX) }
        forItems(g.planes, itemSize: hw * 2) { plane in
            let dyp = dY + plane * ho * wo, dxp = dX + plane * hw
            dxp.update(repeating: 0, count: hw)
            for oh in 0..<ho {
                let rows = g.window(oh, size: g.h)
                for ow in 0..<wo {
                    let cols = g.window(ow, size: g.w)
                    let divisor = countIncludePad ? g.k * g.k : rows.count * cols.count
                    let v = dyp[oh * wo + ow] / Float(divisor)
                    for ih in rows {
                        let dxrow = dxp + ih * g.w
                        for iw in cols { dxrow[iw] += v }
                    }
                }
            }
        }
    }

    /// Average pool 3×3, padding 1, any stride, separably: the (1–3) rows of each output row's
    /// window are summed column by column once, then each output adds three column sums.
    static func avgPool3x3Forward(_ g: PoolGeometry, countIncludePad: Bool, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let (ho, wo, h, w, s) = (g.hOut, g.wOut, g.h, g.w, g.stride)
        forItems(g.planes, itemSize: h * w * 2) { plane in
            let xp = x + plane * h * w, yp = y + plane * ho * wo
            withUnsafeTemporaryAllocation(of: Float.self, capacity: w) { buffer in
                let col = buffer.baseAddress!
                for oh in 0..<ho {
                    let rows = g.window(oh, size: h)
                    col.update(from: xp + rows.lowerBound * w, count: w)
                    for ih in rows.dropFirst() {
                        let r = xp + ih * w
                        for j in 0..<w { col[j] += r[j] }
                    }
                    let rc = Float(countIncludePad ? 3 : rows.count), yrow = yp + oh * wo
                    for ow in 0..<wo {
                        let c0 = ow * s - 1, lo = max(c0, 0), hi = min(c0 + 3, w)
                        var t: Float = 0
                        for j in lo..<hi { t += col[j] }
                        yrow[ow] = t / (rc * Float(countIncludePad ? 3 : hi - lo))
                    }
                }
            }
        }
    }

    /// Its backward: each output row's dY/divisor is spread over its three columns into a row
    /// buffer once, then added into the (1–3) input rows of the window.
    static func avgPool3x3Backward(_ g: PoolGeometry, countIncludePad: Bool, dY: UnsafePointer<Float>, dX: UnsafeMutablePointer<Float>) {
        let (ho, wo, h, w, s) = (g.hOut, g.wOut, g.h, g.w, g.stride)
        forItems(g.planes, itemSize: h * w * 2) { plane in
            let dyp = dY + plane * ho * wo, dxp = dX + plane * h * w
            dxp.update(repeating: 0, count: h * w)
            withUnsafeTemporaryAllocation(of: Float.self, capacity: w) { buffer in
                let spread = buffer.baseAddress!
                for oh in 0..<ho {
                    let rows = g.window(oh, size: h)
                    spread.update(repeating: 0, count: w)
                    let rc = Float(countIncludePad ? 3 : rows.count), dyrow = dyp + oh * wo
                    for ow in 0..<wo {
                        let c0 = ow * s - 1, lo = max(c0, 0), hi = min(c0 + 3, w)
                        let v = dyrow[ow] / (rc * Float(countIncludePad ? 3 : hi - lo))
                        for j in lo..<hi { spread[j] += v }
                    }
                    for ih in rows {
                        let r = dxp + ih * w
                        for j in 0..<w { r[j] += spread[j] }
                    }
                }
            }
        }
    }

    // MARK: - Global average pool

    /// y (planes) = mean of each plane of x (planes, hw).
    public static func globalAvgPoolForward(_ x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, planes: Int, hw: Int) {
        forItems(planes, itemSize: hw) { plane in
            y[plane] = Float(rowSum(x + plane * hw, count: hw) / Double(hw))
        }
    }

    /// dX (planes, hw) = dY[plane] / hw, overwritten.
    public static func globalAvgPoolBackward(_ dY: UnsafePointer<Float>, dX: UnsafeMutablePointer<Float>, planes: Int, hw: Int) {
        forItems(planes, itemSize: hw) { plane in
            (dX + plane * hw).update(repeating: dY[plane] / Float(hw), count: hw)
        }
    }

    /// Σ p[0..<count] in Double (four Float lanes per block of 4096).
    @inline(__always)
    static func rowSum(_ p: UnsafePointer<Float>, count: Int) -> Double {
        var total: Double = 0
        var i = 0
        while i < count {
            let end = min(i + 4096, count)
            var s0: Float = 0, s1: Float = 0, s2: Float = 0, s3: Float = 0
            var j = i
            while j + 4 <= end { s0 += p[j]; s1 += p[j + 1]; s2 += p[j + 2]; s3 += p[j + 3]; j += 4 }
            while j < end { s0 += p[j]; j += 1 }
            total += Double((s0 + s1) + (s2 + s3))
            i = end
        }
        return total
    }

    // MARK: - Naive references

    public static func maxPool2dForwardNaive(_ g: PoolGeometry, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let (ho, wo) = (g.hOut, g.wOut)
        for plane in 0..<g.planes {
            for oh in 0..<ho {
                for ow in 0..<wo {
                    var best = -Float.infinity
                    for ki in 0..<g.k {
                        for kj in 0..<g.k {
                            let ih = oh * g.stride - g.padding + ki, iw = ow * g.stride - g.padding + kj
                            if ih < 0 || ih >= g.h || iw < 0 || iw >= g.w { continue }
                            let v = x[(plane * g.h + ih) * g.w + iw]
                            if v > best || v.isNaN { best = v }
                        }
                    }
                    y[(plane * ho + oh) * wo + ow] = best
                }
            }
        }
    }

    public static func maxPool2dBackwardNaive(_ g: PoolGeometry, x: UnsafePointer<Float>, dY: UnsafePointer<Float>, dX: UnsafeMutablePointer<Float>) {
        let (ho, wo) = (g.hOut, g.wOut)
        dX.update(repeating: 0, count: g.planes * g.h * g.w)
        for plane in 0..<g.planes {
            for oh in 0..<ho {
                for ow in 0..<wo {
                    var best = -Float.infinity
                    var arg = -1
                    for ki in 0..<g.k {
                        for kj in 0..<g.k {
                            let ih = oh * g.stride - g.padding + ki, iw = ow * g.stride - g.padding + kj
                            if ih < 0 || ih >= g.h || iw < 0 || iw >= g.w { continue }
                            let i = (plane * g.h + ih) * g.w + iw
                            if arg < 0 || x[i] > best || x[i].isNaN { best = x[i]; arg = i }
                        }
                    }
                    dX[arg] += dY[(plane * ho + oh) * wo + ow]
                }
            }
        }
    }

    public static func avgPool2dForwardNaive(_ g: PoolGeometry, countIncludePad: Bool, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let (ho, wo) = (g.hOut, g.wOut)
        for plane in 0..<g.planes {
            for oh in 0..<ho {
                for ow in 0..<wo {
                    var s: Double = 0
                    var inside = 0
                    for ki in 0..<g.k {
                        for kj in 0..<g.k {
                            let ih = oh * g.stride - g.padding + ki, iw = ow * g.stride - g.padding + kj
                            if ih < 0 || ih >= g.h || iw < 0 || iw >= g.w { continue }
                            s += Double(x[(plane * g.h + ih) * g.w + iw])
                            inside += 1
                        }
                    }
                    y[(plane * ho + oh) * wo + ow] = Float(s / Double(countIncludePad ? g.k * g.k : inside))
                }
            }
        }
    }

    public static func avgPool2dBackwardNaive(_ g: PoolGeometry, countIncludePad: Bool, dY: UnsafePointer<Float>, dX: UnsafeMutablePointer<Float>) {
        let (ho, wo) = (g.hOut, g.wOut)
        dX.update(repeating: 0, count: g.planes * g.h * g.w)
        for plane in 0..<g.planes {
            for oh in 0..<ho {
                for ow in 0..<wo {
                    var taps: [Int] = []
                    for ki in 0..<g.k {
                        for kj in 0..<g.k {
                            let ih = oh * g.stride - g.padding + ki, iw = ow * g.stride - g.padding + kj
                            if ih < 0 || ih >= g.h || iw < 0 || iw >= g.w { continue }
                            taps.append((plane * g.h + ih) * g.w + iw)
                        }
                    }
                    let dy = dY[(plane * ho + oh) * wo + ow] / Float(countIncludePad ? g.k * g.k : taps.count)
                    for i in taps { dX[i] += dy }
                }
            }
        }
    }

    public static func globalAvgPoolForwardNaive(_ x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, planes: Int, hw: Int) {
        for plane in 0..<planes {
            var s: Double = 0
            for i in 0..<hw { s += Double(x[plane * hw + i]) }
            y[plane] = Float(s / Double(hw))
        }
    }

    public static func globalAvgPoolBackwardNaive(_ dY: UnsafePointer<Float>, dX: UnsafeMutablePointer<Float>, planes: Int, hw: Int) {
        for plane in 0..<planes { for i in 0..<hw { dX[plane * hw + i] = dY[plane] / Float(hw) } }
    }
}
