// Pooling, NCHW: max k×k, average k×k, global average. Forward and backward side by side, each
// with the naive reference it is tested against. Floor-mode output size (PyTorch's default).
//   max      padding counts as −∞; backward recomputes the argmax from the input (no index
//            buffer). Ties: the first maximum in row-major window order wins, in both passes.
//            NaN propagates as in PyTorch.
//   average  divisor = in-image elements of the window (count_include_pad=False) or k·k.
//            Backward needs no saved tensor.
//   global   (N, C, H, W) → (N, C), the mean of each plane.
// Planes (sample, channel) are independent: the tuned paths split them across cores and clip
// each window to the image once instead of testing every tap. Backward overwrites dX, or, given
// an addend (the input's gradient so far), stores dX = addend + the plane's gradient, made in a
// scratch plane first: the floats of a separate add pass, without that pass (`planeGradient`).
// dY may be given as a batch norm's pending gradient (`dYSource`, the pool's output normalised by
// a batch norm without affine map): each dY plane is made where it is read (`gradientPlane`).

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

    /// y = max over each k×k window (padding counts as −∞). 3×3 windows with padding 1 (DARTS's
    /// max_pool_3x3, stride 1 or 2) take the separable path; other sizes the general one.
    public static func maxPool2dForward(_ g: PoolGeometry, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let (ho, wo, hw) = (g.hOut, g.wOut, g.h * g.w)
        if g.k == 3 && g.padding == 1 {
            maxPool3x3Forward(g, x: x, y: y)
            return
        }
        forItems(g.planes, itemSize: hw * 2) { plane in
            let xp = x + plane * hw, yp = y + plane * ho * wo
            for oh in 0..<ho {
                for ow in 0..<wo { yp[oh * wo + ow] = maxPoolWindow(g, xp, oh, ow).0 }
            }
        }
    }

    /// 3×3, padding 1, separably: per output row, the column maxima of its (2–3) in-image rows,
    /// then y[ow] = max of columns ow·s − 1 … ow·s + 1, −∞ past the image. Stride 1 keeps the
    /// column maxima in registers (`pool3x3StrideOnePlane`); stride 2 goes through a row V
    /// padded with −∞ on both sides. NaN propagates (nanMax).
    static func maxPool3x3Forward(_ g: PoolGeometry, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let (h, w, ho, wo, s, hw) = (g.h, g.w, g.hOut, g.wOut, g.stride, g.h * g.w)
        if s == 1 && w <= pool3x3RegisterRowsUpTo {
            forItems(g.planes, itemSize: hw * 2) { plane in
                pool3x3StrideOnePlane(WindowNaNMax.self, g, x: x + plane * hw, y: y + plane * hw) { m, _, _ in m }
            }
            return
        }
        forItems(g.planes, itemSize: hw * 2) { plane in
            let xp = x + plane * hw, yp = y + plane * ho * wo
            withUnsafeTemporaryAllocation(of: Float.self, capacity: w + 2 + 8) { vBuf in
                let v = vBuf.baseAddress!                        // V: (W + 2), V[1 + iw] = column max
                v[0] = -.infinity
                for i in (w + 1)..<(w + 10) { v[i] = -.infinity }
                for oh in 0..<ho {
                    let top = oh * s - 1
                    let r0 = max(top, 0), r1 = min(top + 2, h - 1)
                    // Column maxima of rows r0…r1 (1 to 3 rows).
                    copyRow(v + 1, xp + r0 * w, w)
                    var r = r0 + 1
                    while r <= r1 { nanMaxRow(v + 1, xp + r * w, w); r += 1 }
                    let yrow = yp + oh * wo
                    if s == 1 {
                        var ow = 0
                        while ow + 8 <= wo {
                            let m = nanMax8(nanMax8(load8(v + ow), load8(v + ow + 1)), load8(v + ow + 2))
                            store8(yrow + ow, m)
                            ow += 8
                        }
                        while ow < wo { yrow[ow] = nanMax(nanMax(v[ow], v[ow + 1]), v[ow + 2]); ow += 1 }
                    } else {
                        for ow in 0..<wo { yrow[ow] = nanMax(nanMax(v[ow * s], v[ow * s + 1]), v[ow * s + 2]) }
                    }
                }
            }
        }
    }

    /// dY's plane `plane` (`count` floats) for `body`: dY's own, or made from `source` into a
    /// scratch plane.
    @inline(__always)
    static func gradientPlane(_ dY: UnsafePointer<Float>, source: BatchNormGradientSource?, plane: Int, count: Int,
                              _ body: (UnsafePointer<Float>) -> Void) {
        guard let source else { return body(dY + plane * count) }
        withUnsafeTemporaryAllocation(of: Float.self, capacity: count) { buffer in
            source.plane(plane, into: buffer.baseAddress!)
            body(buffer.baseAddress!)
        }
    }

    /// One plane's gradient: `body(acc)` adds into acc, zeroed. Without an addend acc is dX's plane
    /// itself; with one, a scratch plane, then stored as dX = addend + acc (dX may be the addend).
    @inline(__always)
    static func planeGradient(_ dxp: UnsafeMutablePointer<Float>, addend: UnsafePointer<Float>?, count: Int,
                              _ body: (UnsafeMutablePointer<Float>) -> Void) {
        guard let addend else {
            dxp.update(repeating: 0, count: count)
            body(dxp)
            return
        }
        withUnsafeTemporaryAllocation(of: Float.self, capacity: count) { buffer in
            let acc = buffer.baseAddress!
            acc.update(repeating: 0, count: count)
            body(acc)
            var i = 0
            while i + 8 <= count { store8(dxp + i, load8(addend + i) + load8(acc + i)); i += 8 }
            while i < count { dxp[i] = addend[i] + acc[i]; i += 1 }
        }
    }

    /// dX[argmax] += dY for each window (overwrites dX first, or adds to `addend`); the arg-max is
    /// recomputed from x. 3×3 windows with padding 1 take the separable path.
    /// `dYSource`, where given, is dY (`dY` is then not read).
    public static func maxPool2dBackward(_ g: PoolGeometry, x: UnsafePointer<Float>, dY: UnsafePointer<Float>, dX: UnsafeMutablePointer<Float>,
                                         addend: UnsafePointer<Float>? = nil, dYSource: BatchNormGradientSource? = nil) {
        let (ho, wo, hw) = (g.hOut, g.wOut, g.h * g.w)
        if g.k == 3 && g.padding == 1 {
            maxPool3x3Backward(g, x: x, dY: dY, dX: dX, addend: addend, dYSource: dYSource)
            return
        }
        forItems(g.planes, itemSize: hw * 2) { plane in
            let xp = x + plane * hw
            gradientPlane(dY, source: dYSource, plane: plane, count: ho * wo) { dyp in
                planeGradient(dX + plane * hw, addend: addend.map { $0 + plane * hw }, count: hw) { dxp in
                    for oh in 0..<ho {
                        for ow in 0..<wo { dxp[maxPoolWindow(g, xp, oh, ow).1] += dyp[oh * wo + ow] }
                    }
                }
            }
        }
    }

    /// Max-pool 3×3, padding 1 backward, separably, with the general path's arg-max rule (the first
    /// maximum in row-major window order; a NaN is taken over anything, a later NaN over an earlier):
    ///   1. each input row's 3-wide (max, first arg-max column) for every output column, SIMD8,
    ///      −∞ past the row (stride 1: x's row itself, the neighbours shifted in registers; stride 2:
    ///      a copy padded with −∞, even and odd halves of 16 loads) → HM, HA (H, Wo8);
    ///   2. per output, the first of its (1–3) in-image rows holding the maximum → the input index
    ///      (SIMD8 over the output row);
    ///   3. dX[index] += dY.
    static func maxPool3x3Backward(_ g: PoolGeometry, x: UnsafePointer<Float>, dY: UnsafePointer<Float>,
                                   dX: UnsafeMutablePointer<Float>, addend: UnsafePointer<Float>?, dYSource: BatchNormGradientSource?) {
        let (h, w, ho, wo, s, hw) = (g.h, g.w, g.hOut, g.wOut, g.stride, g.h * g.w)
        let wo8 = (wo + 7) / 8 * 8                 // rows of HM, HA and IDX padded to whole SIMD8 blocks
        let pCount = s * wo8 + 18                  // P: −∞, the row, −∞ … far enough for every block's reads
        forItems(g.planes, itemSize: hw * 3) { plane in
            let xp = x + plane * hw
            gradientPlane(dY, source: dYSource, plane: plane, count: ho * wo) { dyp in
                planeGradient(dX + plane * hw, addend: addend.map { $0 + plane * hw }, count: hw) { dxp in
                    withUnsafeTemporaryAllocation(of: Float.self, capacity: h * wo8 + pCount) { fBuf in
                        withUnsafeTemporaryAllocation(of: Int32.self, capacity: (h + 1) * wo8) { iBuf in
                            let hm = fBuf.baseAddress!, ha = iBuf.baseAddress!   // HM, HA: (H, Wo8); then IDX (Wo8)
                            let p = hm + h * wo8                                 // P: (pCount) one row padded with −∞
                            if s != 1 { p.update(repeating: -.infinity, count: pCount) }
                            // (Scalars in replace(with:where:) compile to a per-lane loop: they are broadcast here.)
                            let zero = SIMD8<Int32>(), one = SIMD8<Int32>(repeating: 1), lanes = SIMD8<Int32>(0, 1, 2, 3, 4, 5, 6, 7)
                            // Stride 1 reads x's row itself, its neighbours shifted in lane by lane (−∞ past
                            // the image); stride 2 reads P, the row padded with −∞ on both sides.
                            let whole = wholeVectorRows(rows: h, cols: w), minusInf = SIMD8<Float>(repeating: -.infinity)
                            @inline(__always) func rowVector(_ r: Int, _ ow: Int) -> SIMD8<Float> {
                                rowVector8(xp + r * w, col: ow, width: w, inPlane: r < whole, pad: -.infinity)
                            }
                            for r in 0..<h {
                                if s != 1 { copyRow(p + 1, xp + r * w, w) }
                                let mr = hm + r * wo8, ar = ha + r * wo8
                                var ow = 0
                                var left = -Float.infinity, cur = s == 1 ? rowVector(r, 0) : minusInf
                                while ow < wo8 {
                                    // Window columns ow·s − 1 … ow·s + 1: a0, a1, a2 lane by lane.
                                    let a0, a1, a2: SIMD8<Float>
                                    if s == 1 {
                                        let next = rowVector(r, ow + 8)
                                        a0 = SIMD8(left, cur[0], cur[1], cur[2], cur[3], cur[4], cur[5], cur[6])
                                        a1 = cur
                                        a2 = SIMD8(cur[1], cur[2], cur[3], cur[4], cur[5], cur[6], cur[7], next[0])
                                        left = cur[7]; cur = next
                                    } else {
                                        let v = UnsafeRawPointer(p + 2 * ow).loadUnaligned(as: SIMD16<Float>.self)
                                        a0 = v.evenHalf; a1 = v.oddHalf
                                        a2 = UnsafeRawPointer(p + 2 * ow + 2).loadUnaligned(as: SIMD16<Float>.self).evenHalf
                                    }
                                    var m = a0, k = SIMD8<Int32>(repeating: -1)       // k: column offset −1, 0, +1
                                    let t1 = (a1 .> m) .| (a1 .!= a1)
                                    m.replace(with: a1, where: t1); k.replace(with: zero, where: t1)
                                    let t2 = (a2 .> m) .| (a2 .!= a2)
                                    m.replace(with: a2, where: t2); k.replace(with: one, where: t2)
                                    store8(mr + ow, m)
                                    let cols = (lanes &+ SIMD8(repeating: Int32(ow))) &* SIMD8(repeating: Int32(s)) &+ k
                                    UnsafeMutableRawPointer(ar + ow).storeBytes(of: cols, as: SIMD8<Int32>.self)
                                    ow += 8
                                }
                                // Column −1 (the left pad) wins only where the whole in-image window is −∞: column 0.
                                if ar[0] < 0 { ar[0] = 0 }
                            }
                            let idx = ha + h * wo8                               // one output row's input indices
                            for oh in 0..<ho {
                                let top = oh * s - 1
                                let r0 = max(top, 0), r1 = min(top + 2, h - 1)
                                var ow = 0
                                while ow < wo8 {
                                    var m = load8(hm + r0 * wo8 + ow)
                                    var a = loadInt8(ha + r0 * wo8 + ow) &+ SIMD8(repeating: Int32(r0 * w))
                                    var r = r0 + 1
                                    while r <= r1 {
                                        let v = load8(hm + r * wo8 + ow), t = (v .> m) .| (v .!= v)
                                        m.replace(with: v, where: t)
                                        a.replace(with: loadInt8(ha + r * wo8 + ow) &+ SIMD8(repeating: Int32(r * w)), where: t)
                                        r += 1
                                    }
                                    UnsafeMutableRawPointer(idx + ow).storeBytes(of: a, as: SIMD8<Int32>.self)
                                    ow += 8
                                }
                                let dyrow = dyp + oh * wo
                                for ow in 0..<wo { dxp[Int(idx[ow])] += dyrow[ow] }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Floats col..<col+8 of a row of `width` floats lying in a plane, `pad` in the lanes past the
    /// row (all of them where col ≥ width): a whole-vector load where the vector stays inside the
    /// plane (`inPlane`: the row is below `wholeVectorRows`), else only the row's floats are read.
    /// The stride-1 pools' row reads, forward and backward.
    @inline(__always)
    static func rowVector8(_ row: UnsafePointer<Float>, col: Int, width: Int, inPlane: Bool, pad: Float) -> SIMD8<Float> {
        if col + 8 <= width { return load8(row + col) }
        let padding = SIMD8<Float>(repeating: pad)
        if col >= width { return padding }
        let rem = width - col
        return (inPlane ? load8(row + col) : loadPartial8(row + col, rem))
            .replacing(with: padding, where: SIMD8<Int32>(0, 1, 2, 3, 4, 5, 6, 7) .>= SIMD8<Int32>(repeating: Int32(rem)))
    }

    /// max(a, b) per lane, letting NaN through like `nanMax`.
    @inline(__always)
    static func nanMax8(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        a.replacing(with: b, where: (b .> a) .| (b .!= b))
    }

    @inline(__always)
    static func loadInt8(_ p: UnsafePointer<Int32>) -> SIMD8<Int32> { UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Int32>.self) }

    /// v[i] = nanMax(v[i], x[i]) for a row.
    @inline(__always)
    static func nanMaxRow(_ v: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) {
        var i = 0
        while i + 8 <= n { store8(v + i, nanMax8(load8(v + i), load8(x + i))); i += 8 }
        while i < n { v[i] = nanMax(v[i], x[i]); i += 1 }
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

    /// dX = ∂/∂x (overwritten, or added to `addend`): each dY spread evenly over the elements its
    /// window divided by.
    /// `dYSource`, where given, is dY (`dY` is then not read).
    public static func avgPool2dBackward(_ g: PoolGeometry, countIncludePad: Bool, dY: UnsafePointer<Float>, dX: UnsafeMutablePointer<Float>,
                                         addend: UnsafePointer<Float>? = nil, dYSource: BatchNormGradientSource? = nil) {
        let (ho, wo, hw) = (g.hOut, g.wOut, g.h * g.w)
        if g.k == 3 && g.padding == 1 {
            return avgPool3x3Backward(g, countIncludePad: countIncludePad, dY: dY, dX: dX, addend: addend, dYSource: dYSource)
        }
        forItems(g.planes, itemSize: hw * 2) { plane in
            gradientPlane(dY, source: dYSource, plane: plane, count: ho * wo) { dyp in
                planeGradient(dX + plane * hw, addend: addend.map { $0 + plane * hw }, count: hw) { dxp in
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
        }
    }

    /// Average pool 3×3, padding 1, separably: the (1–3) rows of each output row's window are
    /// summed column by column once, then each output adds three column sums. Stride 1 keeps the
    /// column sums in registers (`pool3x3StrideOnePlane`); stride 2 goes through a row buffer.
    static func avgPool3x3Forward(_ g: PoolGeometry, countIncludePad: Bool, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let (ho, wo, h, w, s) = (g.hOut, g.wOut, g.h, g.w, g.stride)
        let inv = avgPool3x3ColumnInverses(g, countIncludePad: countIncludePad)
        defer { inv.deallocate() }
        if s == 1 && w <= pool3x3RegisterRowsUpTo {
            forItems(g.planes, itemSize: h * w * 2) { plane in
                pool3x3StrideOnePlane(WindowSum.self, g, x: x + plane * h * w, y: y + plane * ho * wo) { sums, k, rows in
                    sums * load8(inv + 8 * k) * SIMD8(repeating: 1 / Float(countIncludePad ? 3 : rows.count))
                }
            }
            return
        }
        forItems(g.planes, itemSize: h * w * 2) { plane in
            let xp = x + plane * h * w, yp = y + plane * ho * wo
            withUnsafeTemporaryAllocation(of: Float.self, capacity: s * wo + 12) { buffer in
                let p = buffer.baseAddress!                      // P: 0, column sums (W), 0 …
                p.update(repeating: 0, count: s * wo + 12)
                for oh in 0..<ho {
                    let rows = g.window(oh, size: h)
                    copyRow(p + 1, xp + rows.lowerBound * w, w)
                    for ih in rows.dropFirst() { addRow(p + 1, xp + ih * w, w) }
                    let rowScale = 1 / Float(countIncludePad ? 3 : rows.count), yrow = yp + oh * wo
                    var ow = 0
                    if s == 1 {
                        let rs = SIMD8<Float>(repeating: rowScale)
                        while ow + 8 <= wo {
                            store8(yrow + ow, (load8(p + ow) + load8(p + ow + 1) + load8(p + ow + 2)) * load8(inv + ow) * rs)
                            ow += 8
                        }
                    }
                    while ow < wo {
                        let c = ow * s
                        yrow[ow] = (p[c] + p[c + 1] + p[c + 2]) * inv[ow] * rowScale
                        ow += 1
                    }
                }
            }
        }
    }

    /// The widest rows `pool3x3StrideOnePlane` takes; wider ones take the row buffer. Measured
    /// (min of 20, B=64, cold caches, the row-buffer form against it in one process): average
    /// pool 0.45–0.48× as long at 7 wide and 0.67–0.68× at 14, max pool 0.49–0.51× and
    /// 0.67–0.71×, but 1.23× and 1.27–1.28× at 28, where the lane shifts (built lane by lane:
    /// 8 broadcasts and blends a vector) cost more than the waits they avoid.
    static let pool3x3RegisterRowsUpTo = 16

    /// One plane of a stride-1 3×3 pool (padding 1), the window's column reductions held in
    /// registers: per output row and vector of 8 columns, R.combine over its (1–3) rows, then
    /// each output combines its left, own and right column, the neighbours shifted in from the
    /// vectors beside it (R.pad past the image), and `finish(window, k, rows)` makes the value
    /// stored. Nothing is stored and read back at another offset: the row-buffer form reads a row
    /// of column results just written, one float on, and in one profile of the DARTS step 73 % of
    /// the average pool's samples sat on that read (a load no single store can forward to).
    /// The same operations in the same order as the row-buffer form, so the same bits.
    @inline(__always)
    static func pool3x3StrideOnePlane<R: WindowReduction>(_: R.Type, _ g: PoolGeometry, x xp: UnsafePointer<Float>, y yp: UnsafeMutablePointer<Float>,
                                                          finish: (SIMD8<Float>, Int, Range<Int>) -> SIMD8<Float>) {
        let (h, w) = (g.h, g.w), nv = (w + 7) / 8, rem = w & 7
        let pad = SIMD8<Float>(repeating: R.pad)
        // Rows (of x, and of y, as wo == w) whose ⌈w/8⌉ vectors stay inside the plane (asked only
        // of a partial last vector).
        let whole = wholeVectorRows(rows: h, cols: w)
        @inline(__always) func columns(_ rows: Range<Int>, _ k: Int) -> SIMD8<Float> {
            var v = SIMD8<Float>()
            for (i, r) in rows.enumerated() {
                let row = rowVector8(xp + r * w, col: 8 * k, width: w, inPlane: r < whole, pad: R.pad)
                v = i == 0 ? row : R.combine(v, row)
            }
            return v
        }
        for oh in 0..<h {
            let rows = g.window(oh, size: h), yrow = yp + oh * w
            var left = R.pad, cur = columns(rows, 0)
            for k in 0..<nv {
                let next = k + 1 < nv ? columns(rows, k + 1) : pad
                let l = SIMD8<Float>(left, cur[0], cur[1], cur[2], cur[3], cur[4], cur[5], cur[6])
                let r = SIMD8<Float>(cur[1], cur[2], cur[3], cur[4], cur[5], cur[6], cur[7], next[0])
                let out = finish(R.combine(R.combine(l, cur), r), k, rows)
                if 8 * k + 8 <= w || oh < whole { store8(yrow + 8 * k, out) } else { storePartial8(yrow + 8 * k, out, rem) }
                left = cur[7]; cur = next
            }
        }
    }

    /// Its backward: each output row's dY/divisor (V, zero past the row) is spread over its three
    /// columns into a row once (stride 1: spread[c] = V[c − 1] + V[c] + V[c + 1], SIMD8, V's
    /// shifted neighbours made in registers), then added into the (1–3) input rows of the window.
    static func avgPool3x3Backward(_ g: PoolGeometry, countIncludePad: Bool, dY: UnsafePointer<Float>, dX: UnsafeMutablePointer<Float>,
                                   addend: UnsafePointer<Float>?, dYSource: BatchNormGradientSource?) {
        let (ho, wo, h, w, s) = (g.hOut, g.wOut, g.h, g.w, g.stride)
        let inv = avgPool3x3ColumnInverses(g, countIncludePad: countIncludePad)
        defer { inv.deallocate() }
        // Stride 1 reads dY's rows in whole vectors where the vector stays inside the plane (dY's
        // own, or a scratch plane of the same size), the lanes past the row dropped.
        let nv = (w + 7) / 8, whole = wholeVectorRows(rows: ho, cols: wo)
        forItems(g.planes, itemSize: h * w * 2) { plane in
            gradientPlane(dY, source: dYSource, plane: plane, count: ho * wo) { dyp in
                planeGradient(dX + plane * h * w, addend: addend.map { $0 + plane * h * w }, count: h * w) { dxp in
                    withUnsafeTemporaryAllocation(of: Float.self, capacity: w + 12) { buffer in
                        let spread = buffer.baseAddress!   // one row: W + 2 floats (stride 2), ⌈W/8⌉·8 (stride 1)
                        for oh in 0..<ho {
                            let rows = g.window(oh, size: h)
                            let rowScale = 1 / Float(countIncludePad ? 3 : rows.count), dyrow = dyp + oh * wo
                            if s == 1 {
                                // d = dY·inv·rowScale, 0 past the row, in registers: spread = (d shifted right
                                // + d) + d shifted left, each neighbour shifted in lane by lane.
                                let rs = SIMD8<Float>(repeating: rowScale)
                                @inline(__always) func d(_ k: Int) -> SIMD8<Float> {
                                    if 8 * k >= w { return SIMD8<Float>() }
                                    // 0 past the row: inv is 0 there too, so the product is 0 as V's padding was.
                                    return rowVector8(dyrow, col: 8 * k, width: w, inPlane: oh < whole, pad: 0) * load8(inv + 8 * k) * rs
                                }
                                var left: Float = 0, cur = d(0)
                                for k in 0..<nv {
                                    let next = d(k + 1)
                                    let l = SIMD8<Float>(left, cur[0], cur[1], cur[2], cur[3], cur[4], cur[5], cur[6])
                                    let r = SIMD8<Float>(cur[1], cur[2], cur[3], cur[4], cur[5], cur[6], cur[7], next[0])
                                    store8(spread + 8 * k, l + cur + r)
                                    left = cur[7]; cur = next
                                }
                            } else {
                                spread.update(repeating: 0, count: w + 2)
                                for ow in 0..<wo {
                                    let c0 = ow * s - 1, lo = max(c0, 0), hi = min(c0 + 3, w)
                                    let d = dyrow[ow] * inv[ow] * rowScale
                                    for j in lo..<hi { spread[j] += d }
                                }
                            }
                            for ih in rows { addRow(dxp + ih * w, spread, w) }
                        }
                    }
                }
            }
        }
    }

    /// 1 / (in-image columns of output column ow's window), or 1/3 with count_include_pad.
    /// (Wo + 8 floats, zero past Wo; the caller deallocates it.)
    static func avgPool3x3ColumnInverses(_ g: PoolGeometry, countIncludePad: Bool) -> UnsafeMutablePointer<Float> {
        let table = UnsafeMutablePointer<Float>.allocate(capacity: g.wOut + 8)
        for ow in 0..<g.wOut {
            let c0 = ow * g.stride - 1, lo = max(c0, 0), hi = min(c0 + 3, g.w)
            table[ow] = 1 / Float(countIncludePad ? 3 : hi - lo)
        }
        for ow in g.wOut..<(g.wOut + 8) { table[ow] = 0 }
        return table
    }

    /// dst[0..<n] += src[0..<n].
    @inline(__always)
    static func addRow(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int) {
        var i = 0
        while i + 8 <= n { store8(dst + i, load8(dst + i) + load8(src + i)); i += 8 }
        while i < n { dst[i] += src[i]; i += 1 }
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

/// How a 3×3 pool combines the values of its window, and what lies past the image.
protocol WindowReduction {
    static var pad: Float { get }
    static func combine(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float>
}
/// Average pool's sums (divided afterwards): padding adds nothing.
enum WindowSum: WindowReduction {
    static var pad: Float { 0 }
    @inline(__always) static func combine(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> { a + b }
}
/// Max pool's maxima, NaN passing through (`Kernels.nanMax8`): padding is −∞.
enum WindowNaNMax: WindowReduction {
    static var pad: Float { -.infinity }
    @inline(__always) static func combine(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> { Kernels.nanMax8(a, b) }
}
