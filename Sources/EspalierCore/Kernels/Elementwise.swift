// Memory-bound kernels: add, scale, ReLU, weighted sums, dropout masks. Forward and backward
// side by side; each streams its operands once. Raw pointers, no allocation: the caller (an op
// in Autodiff/) owns every buffer. Loops are simple enough for the compiler to vectorise;
// large ones are split across cores.

import Foundation

/// Namespace of raw kernels. Shapes are given in the doc comment of each function.
public enum Kernels {
    /// Below this many elements a loop is not worth splitting across cores.
    static let parallelGrain = 1 << 15

    @inline(__always)
    static func parallelRange(_ count: Int, _ body: (Int, Int) -> Void) {
        if count < parallelGrain * 2 { body(0, count); return }
        Parallel.forChunks(count, grain: parallelGrain) { r in body(r.lowerBound, r.upperBound) }
    }

    // MARK: add

    // In place (out == a), the kernels below run the loop that reads and writes through one
    // pointer: a loop reading `a` and writing `out` at the same address fails the vectoriser's
    // run-time overlap check and runs one float at a time (an axpy written as addScaled in place
    // took 10 % of a zero-shot step's samples against 6 % as its own loop). Same floats either way.

    /// out = a + b  (count; out may be a)
    public static func add(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int) {
        if UnsafePointer(out) == a { addInPlace(out, b, count: count); return }
        parallelRange(count) { lo, hi in for i in lo..<hi { out[i] = a[i] + b[i] } }
    }

    /// out = a + s·b  (count; out may be a): a scaled gradient added where it is accumulated, the
    /// floats of `scale` followed by `add`.
    public static func addScaled(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, scale s: Float, _ out: UnsafeMutablePointer<Float>, count: Int) {
        if UnsafePointer(out) == a { axpy(s, b, out, count: count); return }
        parallelRange(count) { lo, hi in for i in lo..<hi { out[i] = a[i] + s * b[i] } }
    }

    /// acc += x  (count)
    public static func addInPlace(_ acc: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count: Int) {
        parallelRange(count) { lo, hi in for i in lo..<hi { acc[i] += x[i] } }
    }

    /// acc += alpha·x  (count)
    public static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ acc: UnsafeMutablePointer<Float>, count: Int) {
        parallelRange(count) { lo, hi in for i in lo..<hi { acc[i] += alpha * x[i] } }
    }

    // MARK: scale by a scalar (mixing weights)

    /// out = s·x  (count; out may be x)
    public static func scale(_ x: UnsafePointer<Float>, _ s: Float, _ out: UnsafeMutablePointer<Float>, count: Int) {
        if UnsafePointer(out) == x { parallelRange(count) { lo, hi in for i in lo..<hi { out[i] = s * out[i] } }; return }
        parallelRange(count) { lo, hi in for i in lo..<hi { out[i] = s * x[i] } }
    }

    /// ⟨a, b⟩ accumulated in Double (gradient of a scalar weight).
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Double {
        var s0: Float = 0, s1: Float = 0, s2: Float = 0, s3: Float = 0
        var total: Double = 0
        var i = 0
        // Blocks of 4096 summed in Float (vectorised), blocks added in Double.
        while i < count {
            let end = min(i + 4096, count)
            var j = i
            while j + 4 <= end {
                s0 += a[j] * b[j]; s1 += a[j + 1] * b[j + 1]; s2 += a[j + 2] * b[j + 2]; s3 += a[j + 3] * b[j + 3]
                j += 4
            }
            while j < end { s0 += a[j] * b[j]; j += 1 }
            total += Double(s0 + s1 + s2 + s3)
            s0 = 0; s1 = 0; s2 = 0; s3 = 0
            i = end
        }
        return total
    }

    /// Σx² in Double.
    public static func sumSquares(_ x: UnsafePointer<Float>, count: Int) -> Double { dot(x, x, count: count) }

    // MARK: SIMD8 loads and stores (unaligned), for the row loops of the kernels

    @inline(__always) static func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }
    @inline(__always) static func store8(_ p: UnsafeMutablePointer<Float>, _ v: SIMD8<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
    }

    // MARK: ReLU

    /// y = max(x, 0)  (count)
    public static func reluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        parallelRange(count) { lo, hi in for i in lo..<hi { y[i] = max(x[i], 0) } }
    }

    /// dX = dY · [y > 0]  (count); uses the output, so the input need not be kept.
    public static func reluBackward(_ y: UnsafePointer<Float>, _ dY: UnsafePointer<Float>, _ dX: UnsafeMutablePointer<Float>, count: Int) {
        parallelRange(count) { lo, hi in for i in lo..<hi { dX[i] = y[i] > 0 ? dY[i] : 0 } }
    }

    // MARK: weighted sum of n tensors

    /// out = Σ_k w[k]·x_k  (each count), added term by term in k's order. Per tile of out
    /// (`weightedSumTile` floats, in L2), terms go in groups of `weightedSumGroup`: each vector of
    /// the tile is summed in a register over the group's terms, the first group from zero, the
    /// next ones from the sums so far, which the tile keeps. Each element's sum is the same
    /// sequence of roundings as the plain loop's.
    /// Why groups: a cell node's sum has up to 35 terms (5 edges × 7 candidates), each larger than
    /// L2 and together larger than L3, and with every term streaming at once the loads ran at
    /// 13–14 GB/s, against 32–46 GB/s at 7–14 terms. In groups of 8 over 64 KiB tiles: 0.42× as
    /// long at 35 terms of 64×16×28×28, 0.36× at 21 terms of 64×32×14×14, 0.75× at 14, 1.04× at 7
    /// (cold caches, min of 8, scratch timing; tiles of 16 and 64 KiB with groups of 4, 8 and 12
    /// measured 0.40–0.44×, 0.36–0.46×, 0.75–0.86× and 0.96–1.04× there). (Before that it summed
    /// tiles of 4 KiB term by term, writing the tile once per term: 1.1–1.5× as long at 8 terms.)
    public static func weightedSumForward(_ xs: [UnsafePointer<Float>], _ w: [Float], _ out: UnsafeMutablePointer<Float>, count: Int) {
        guard !xs.isEmpty else { parallelRange(count) { lo, hi in (out + lo).update(repeating: 0, count: hi - lo) }; return }
        xs.withUnsafeBufferPointer { xp in
            w.withUnsafeBufferPointer { wp in
                let k = xp.count
                parallelRange(count) { lo, hi in
                    var t = lo
                    while t < hi {
                        let len = min(weightedSumTile, hi - t), o = out + t, whole = len & ~7
                        var first = 0
                        while first < k {
                            let last = min(first + weightedSumGroup, k)
                            var i = 0
                            while i < whole {
                                var acc = first == 0 ? SIMD8<Float>(repeating: wp[0]) * load8(xp[0] + t + i) : load8(o + i)
                                for j in max(first, 1)..<last { acc = acc + SIMD8<Float>(repeating: wp[j]) * load8(xp[j] + t + i) }
                                store8(o + i, acc)
                                i += 8
                            }
                            while i < len {
                                var acc = first == 0 ? wp[0] * xp[0][t + i] : o[i]
                                for j in max(first, 1)..<last { acc = acc + wp[j] * xp[j][t + i] }
                                o[i] = acc
                                i += 1
                            }
                            first = last
                        }
                        t += len
                    }
                }
            }
        }
    }

    /// `weightedSumForward`'s tile (64 KiB of out) and terms per pass over it.
    static let weightedSumTile = 1 << 14
    static let weightedSumGroup = 8

    /// Floats per tile of the tiled kernels (4 KiB: several operands stay in L1).
    static let tile = 1024

    /// [Σ a·b_k for each k], reading each tile of a once for all k; both cores (Float lanes per
    /// tile, tiles added in Double). The α gradient of a weighted sum: one dot per term.
    public static func dots(_ a: UnsafePointer<Float>, _ bs: [UnsafePointer<Float>], count: Int) -> [Double] {
        let k = bs.count
        guard k > 0 else { return [] }
        let chunks = count < parallelGrain * 2 ? 1 : Parallel.chunkCount(count / parallelGrain)
        let partial = UnsafeMutablePointer<Double>.allocate(capacity: chunks * k)   // (chunks, k)
        defer { partial.deallocate() }
        partial.update(repeating: 0, count: chunks * k)
        Parallel.forChunksIndexed(count, chunks: chunks) { c, range in
            let sums = partial + c * k
            var t = range.lowerBound
            while t < range.upperBound {
                let end = min(t + tile, range.upperBound)
                for j in 0..<k {
                    let b = bs[j]
                    var acc = SIMD8<Float>(), tail: Float = 0
                    var i = t
                    while i + 8 <= end { acc.addProduct(load8(a + i), load8(b + i)); i += 8 }
                    while i < end { tail += a[i] * b[i]; i += 1 }
                    sums[j] += Double(acc.sum()) + Double(tail)
                }
                t = end
            }
        }
        return (0..<k).map { j in (0..<chunks).reduce(0.0) { $0 + partial[$1 * k + j] } }
    }

    /// A weighted sum's backward in one pass over dY and its terms xs[k], all (N, C, hw):
    /// - where `sums[k]` is non-nil, the channel sums term k's op takes with its gradient s_k·dY
    ///   (`GradientForms.channelSums`): sums[k][c] = Σ s_k·dY and sums[k][C + c] = Σ (s_k·dY)·x_k
    ///   over channel c, each plane's Float lanes added in Double in sample order: the same floats,
    ///   in the same order, as `batchNormBackward`'s sums pass over x̂ = x_k and s_k·dY;
    /// - where `dots` is non-nil, dots[k] = Σ dY·x_k (the weight gradient; channel by channel).
    /// Channels are split across the cores, each summed whole by one: no result depends on the split.
    /// Terms run three at a time over each plane (`ChannelSumLanes`): their sums are chains of
    /// their own, so three run side by side where one alone waits on its adds. Measured against
    /// `dots` and the batch norms' own sums passes (B=64, 14 terms, 12 taking sums, cold caches, min
    /// of 10) at 28×28 C=16, 14×14 C=32, 7×7 C=64: one term at a time 0.79/0.86/0.66× (with w's
    /// gradient) and 1.14/1.08/0.79× (without); three at a time 0.56/0.68/0.75× and 0.77/0.79/0.74×.
    /// Each core's channels are walked sample by sample (below; term group by term group where
    /// planes are large, `channelSumsGroupsOuterFrom`), not channel by channel: against the
    /// channel-by-channel walk (8 terms, 6 taking sums, same shapes, min of 12) 0.73/0.57/0.51× with
    /// w's gradient and 0.80/0.52/0.53× without; with two ranges per core 0.84/0.62/0.56×.
    public static func weightedSumChannelSums(_ dY: UnsafePointer<Float>, _ xs: [UnsafePointer<Float>], scales: [Float],
                                              sums: [UnsafeMutablePointer<Double>?], dots: UnsafeMutablePointer<Double>?,
                                              n: Int, c: Int, hw: Int) {
        let k = xs.count
        precondition(scales.count == k && sums.count == k, "one scale and one sums buffer per term")
        let terms = (0..<k).filter { sums[$0] != nil || dots != nil }
        guard !terms.isEmpty else { return }
        let perChannel = UnsafeMutablePointer<Double>.allocate(capacity: max(1, k * c))   // (k, C): Σ dY·x_k per channel
        defer { perChannel.deallocate() }
        let groups = stride(from: 0, to: terms.count, by: 3).map { Array(terms[$0..<min($0 + 3, terms.count)]) }
        let fresh = groups.map { group in ChannelSumLanes(group.map { (xs[$0], scales[$0]) }) }   // each group's sums at zero
        // Each core's channels walked sample by sample (`forChannelRanges`); each channel keeps its
        // own running sums (a copy of `fresh`) and adds its planes in sample order, so every sum is
        // the same float.
        forChannelRanges(c, work: n * c * hw * (terms.count + 1)) { channels in
            var lanes = [ChannelSumLanes]()
            lanes.reserveCapacity(channels.count * fresh.count)
            for _ in channels { lanes.append(contentsOf: fresh) }
            lanes.withUnsafeMutableBufferPointer { lanes in
                // lanes[i·G + g]: channel i of the range, group g. Planes of `channelSumsGroupsOuterFrom`
                // floats or more go group by group, each group's terms streaming through the whole
                // range; smaller ones all groups per plane, dY's plane read once for them.
                let gc = fresh.count
                if hw >= channelSumsGroupsOuterFrom {
                    for g in 0..<gc {
                        for sample in 0..<n {
                            for (i, ch) in channels.enumerated() {
                                let off = (sample * c + ch) * hw
                                lanes[i * gc + g].addPlane(dY + off, offset: off, count: hw)
                            }
                        }
                    }
                    return
                }
                for sample in 0..<n {
                    var i = 0
                    for ch in channels {
                        let off = (sample * c + ch) * hw
                        for _ in 0..<gc { lanes[i].addPlane(dY + off, offset: off, count: hw); i += 1 }
                    }
                }
            }
            var i = 0
            for ch in channels {
                for group in groups {
                    for (t, j) in group.enumerated() {
                        let r = lanes[i].sums(t)
                        if let out = sums[j] { out[ch] = r.sumDy; out[c + ch] = r.sumDyX }
                        perChannel[j * c + ch] = r.dot
                    }
                    i += 1
                }
            }
        }
        if let dots { for j in 0..<k { dots[j] = (0..<c).reduce(0.0) { $0 + perChannel[j * c + $1] } } }
    }

    /// Plane size (floats) from which `weightedSumChannelSums` walks its term groups one after
    /// another rather than all groups per plane (the same sums either way). Group by group, at
    /// B=64 (cold caches, min of 6, two runs): 0.87–0.92× as long at 35 and 14 terms of 28×28
    /// C=16, 0.69× at 21 terms of 14×14 C=32, but 1.18× at 7 terms of 7×7 C=64.
    static let channelSumsGroupsOuterFrom = 64

    /// Channels 0..<c in one contiguous range per core (one range where the pass reads fewer than
    /// `parallelGrain` floats), for a per-channel reduction that walks its range sample by sample:
    /// a sample's planes of the range lie side by side, so the walk streams through the tensors
    /// (channel by channel, it would jump C·hw floats after every plane). Each channel keeps its
    /// own running sums, so the split never moves a result.
    @inline(__always)
    static func forChannelRanges(_ c: Int, work: Int, _ body: (Range<Int>) -> Void) {
        let ranges = work < parallelGrain ? 1 : Parallel.workers
        Parallel.forChunks(c, grain: max(1, c / ranges), body)
    }

    /// Up to three terms' running sums over one channel: per term Σ s·dY, Σ (s·dY)·x and Σ dY·x,
    /// each plane's lanes added in Double. A group of fewer than three repeats its last term in
    /// the spare places (their sums are dropped), so every plane runs the one three-term loop.
    struct ChannelSumLanes {
        let x0, x1, x2: UnsafePointer<Float>
        let s0, s1, s2: Float
        var y0 = 0.0, y1 = 0.0, y2 = 0.0, p0 = 0.0, p1 = 0.0, p2 = 0.0, d0 = 0.0, d1 = 0.0, d2 = 0.0

        init(_ terms: [(UnsafePointer<Float>, Float)]) {
            let t = terms + Array(repeating: terms.last!, count: 3 - terms.count)
            (x0, s0) = t[0]; (x1, s1) = t[1]; (x2, s2) = t[2]
        }

        /// Term t's Σ s·dY, Σ (s·dY)·x and Σ dY·x so far.
        func sums(_ t: Int) -> (sumDy: Double, sumDyX: Double, dot: Double) {
            t == 0 ? (y0, p0, d0) : t == 1 ? (y1, p1, d1) : (y2, p2, d2)
        }

        /// Adds one plane: dY at `dy`, each term's plane at its pointer + `offset`.
        mutating func addPlane(_ dy: UnsafePointer<Float>, offset: Int, count hw: Int) {
            let a = x0 + offset, b = x1 + offset, e = x2 + offset
            let v0 = SIMD8<Float>(repeating: s0), v1 = SIMD8<Float>(repeating: s1), v2 = SIMD8<Float>(repeating: s2)
            var y0 = SIMD8<Float>(), y1 = SIMD8<Float>(), y2 = SIMD8<Float>()     // Σ s·dY
            var p0 = SIMD8<Float>(), p1 = SIMD8<Float>(), p2 = SIMD8<Float>()     // Σ (s·dY)·x
            var d0 = SIMD8<Float>(), d1 = SIMD8<Float>(), d2 = SIMD8<Float>()     // Σ dY·x
            var i = 0
            while i + 8 <= hw {
                let raw = load8(dy + i)
                let xa = load8(a + i), xb = load8(b + i), xe = load8(e + i)
                let g0 = v0 * raw, g1 = v1 * raw, g2 = v2 * raw
                y0 += g0; y1 += g1; y2 += g2
                p0.addProduct(g0, xa); p1.addProduct(g1, xb); p2.addProduct(g2, xe)
                d0.addProduct(raw, xa); d1.addProduct(raw, xb); d2.addProduct(raw, xe)
                i += 8
            }
            var ty: (Float, Float, Float) = (0, 0, 0), tp: (Float, Float, Float) = (0, 0, 0), td: (Float, Float, Float) = (0, 0, 0)
            while i < hw {
                let raw = dy[i]
                let g0 = s0 * raw, g1 = s1 * raw, g2 = s2 * raw
                ty.0 += g0; ty.1 += g1; ty.2 += g2
                tp.0 += g0 * a[i]; tp.1 += g1 * b[i]; tp.2 += g2 * e[i]
                td.0 += raw * a[i]; td.1 += raw * b[i]; td.2 += raw * e[i]
                i += 1
            }
            self.y0 += Double(y0.sum()) + Double(ty.0); self.y1 += Double(y1.sum()) + Double(ty.1); self.y2 += Double(y2.sum()) + Double(ty.2)
            self.p0 += Double(p0.sum()) + Double(tp.0); self.p1 += Double(p1.sum()) + Double(tp.1); self.p2 += Double(p2.sum()) + Double(tp.2)
            self.d0 += Double(d0.sum()) + Double(td.0); self.d1 += Double(d1.sum()) + Double(td.1); self.d2 += Double(d2.sum()) + Double(td.2)
        }
    }

    // MARK: dropout and drop-path

    /// Fills `mask` (count) with 0 or 1/(1-p), keeping each element with probability 1-p.
    public static func dropoutMask(_ mask: UnsafeMutablePointer<Float>, count: Int, p: Float, rng: inout RNG) {
        let keep = 1 - p, scale = keep > 0 ? 1 / keep : 0
        for i in 0..<count { mask[i] = rng.uniform() < keep ? scale : 0 }
    }

    /// out = x · mask  (count); also dropout backward (dX = dY · mask).
    public static func multiply(_ x: UnsafePointer<Float>, _ mask: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int) {
        parallelRange(count) { lo, hi in for i in lo..<hi { out[i] = x[i] * mask[i] } }
    }

    /// Drop-path: out[n] = x[n] · m[n] for per-sample factors m (N), x: (N, inner).
    public static func perSampleScale(_ x: UnsafePointer<Float>, _ m: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, n: Int, inner: Int) {
        Parallel.forChunks(n) { r in
            for s in r {
                let f = m[s], xs = x + s * inner, os = out + s * inner
                for i in 0..<inner { os[i] = f * xs[i] }
            }
        }
    }
}
