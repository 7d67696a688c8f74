// PC-DARTS's edge output in one pass: the ops' result on the first C/K channels (`head`), the
// other channels of the edge input bypassing the ops (2×2 max-pool at stride 2), concatenated
// and shuffled with K groups — written straight into the shuffled position, so neither the
// bypass slice, nor the concat, nor the pre-shuffle tensor is ever materialised.
//
//   shuffle(concat(head, bypass), K)[i·K + g] = head[i]                 (g = 0)
//                                               bypass(x[g·C/K + i])    (g ≥ 1),  i < C/K
//
// Shapes: x (N, C, H, W), head (N, C/K, H', W'), out (N, C, H', W'); H' = H (stride 1) or
// ⌊H/2⌋ (stride 2; the ops must give the same size). Backward routes dOut back the same way
// (the max-pool's gradient to the first maximum of each window, recomputed from x).
// `partialMixNaive` composes the separate steps and is what the tests compare against.
// A node (`Graph.partialNode`) sums its edges' mixes in one pass (`partialMixSum`: each output
// plane takes every edge while it is in the cache), and each edge's dX is added into the input's
// gradient as it is stored (`partialMixBackward`'s addend), so no gradient of x's size is
// written and then added. Before, a node of m edges took m passes over its output, and each edge
// wrote a gradient of x's size that was then added to x's gradient so far (a read of both and a
// write) wherever x had one.

extension Kernels {
    /// One PC-DARTS edge of `partialMixSum`: its ops' head, its input x (H, W) and stride, and its
    /// weight. It holds the tensors' pointers only: the caller keeps them alive through the call.
    public struct PartialEdge {
        public var head: UnsafePointer<Float>, x: UnsafePointer<Float>, h: Int, w: Int, stride: Int, scale: Float
        public init(head: UnsafePointer<Float>, x: UnsafePointer<Float>, h: Int, w: Int, stride: Int, scale: Float = 1) {
            (self.head, self.x, self.h, self.w, self.stride, self.scale) = (head, x, h, w, stride, scale)
        }
    }

    /// out = Σ_e scale_e·mix(head_e, x_e), the edges in order: the first edge's scale·v, then each
    /// next one's out + scale·v (the product rounded, then the sum), as one edge at a time over
    /// the whole output would add them (`partialMixSumNaive`), in one pass — an output plane
    /// takes all its edges while it is in the cache.
    /// Every edge gives (N, C, Ho, Wo); x_e is (N, C, H_e, W_e).
    public static func partialMixSum(_ edges: [PartialEdge], out: UnsafeMutablePointer<Float>, n: Int, c: Int, k: Int, ho: Int, wo: Int) {
        let q = c / k, plane = ho * wo
        edges.withUnsafeBufferPointer { edges in
            Parallel.forChunks(n * c, grain: 4) { range in
                for job in range {
                    let b = job / c, o = job % c, i = o / k, g = o % k
                    let dst = out + job * plane
                    for (e, edge) in edges.enumerated() {
                        let (h, w, scale) = (edge.h, edge.w, edge.scale)
                        if g == 0 || edge.stride == 1 {
                            let src = g == 0 ? edge.head + (b * q + i) * plane : edge.x + (b * c + g * q + i) * h * w
                            if e == 0 { Kernels.scale(src, scale, dst, count: plane) } else { Kernels.addScaled(dst, src, scale: scale, dst, count: plane) }
                            continue
                        }
                        // (An 8-window SIMD form of this loop, 16 columns split by parity, ran 3.7× as
                        // long at 28×28 → 14×14: kept scalar.)
                        let src = edge.x + (b * c + g * q + i) * h * w
                        for r in 0..<ho {
                            let r0 = src + 2 * r * w, r1 = r0 + w, o = dst + r * wo
                            for s in 0..<wo {
                                let v = max(max(r0[2 * s], r0[2 * s + 1]), max(r1[2 * s], r1[2 * s + 1]))
                                o[s] = e == 0 ? scale * v : o[s] + scale * v
                            }
                        }
                    }
                }
            }
        }
    }

    @inline(__always)
    static func load16(_ p: UnsafePointer<Float>) -> SIMD16<Float> { UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self) }

    @inline(__always)
    static func store16(_ p: UnsafeMutablePointer<Float>, _ v: SIMD16<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD16<Float>.self) }

    /// ⟨dOut, mix(head, x)⟩ without forming the mix (the gradient of a node's edge weight β̃_e).
    public static func partialMixDot(dOut: UnsafePointer<Float>, head: UnsafePointer<Float>, x: UnsafePointer<Float>,
                                     n: Int, c: Int, k: Int, h: Int, w: Int, stride: Int) -> Double {
        let q = c / k, ho = stride == 2 ? h / 2 : h, wo = stride == 2 ? w / 2 : w, plane = ho * wo
        let chunks = Parallel.chunkCount(n * c)
        var partial = [Double](repeating: 0, count: chunks)
        partial.withUnsafeMutableBufferPointer { sums in
            let out = sums.baseAddress!
            Parallel.forChunksIndexed(n * c, chunks: chunks) { index, range in
                var total = 0.0
                for job in range {
                    let b = job / c, o = job % c, i = o / k, g = o % k
                    let d = dOut + job * plane
                    if g == 0 || stride == 1 {
                        let src = g == 0 ? head + (b * q + i) * plane : x + (b * c + g * q + i) * h * w
                        total += Kernels.dot(d, src, count: plane)
                        continue
                    }
                    let src = x + (b * c + g * q + i) * h * w
                    var t: Float = 0
                    for r in 0..<ho {
                        let r0 = src + 2 * r * w, r1 = r0 + w
                        for s in 0..<wo { t += d[r * wo + s] * max(max(r0[2 * s], r0[2 * s + 1]), max(r1[2 * s], r1[2 * s + 1])) }
                    }
                    total += Double(t)
                }
                out[index] = total
            }
        }
        return partial.reduce(0, +)
    }

    /// Backward: dHead = dOut's head channels (overwritten); dX's bypass channels receive dOut
    /// (through the max-pool), its first C/K channels are zero (overwritten).
    /// With `scale`, the gradients of scale·mix(head, x).
    /// With `addend` (laid out as dX; it may be dX itself), dX = addend + that gradient, the floats
    /// `Kernels.add(addend, dX)` would give after the plain call: the head channels are the
    /// addend's (untouched in place, as `narrowChannelsBackward` leaves its other channels), each
    /// bypass value is addend + scale·dOut, and at stride 2 addend + (0 + scale·dOut) at the
    /// window's maximum.
    public static func partialMixBackward(dOut: UnsafePointer<Float>, x: UnsafePointer<Float>, dHead: UnsafeMutablePointer<Float>?,
                                          dX: UnsafeMutablePointer<Float>?, addend: UnsafePointer<Float>? = nil,
                                          n: Int, c: Int, k: Int, h: Int, w: Int, stride: Int, scale: Float = 1) {
        let q = c / k, ho = stride == 2 ? h / 2 : h, wo = stride == 2 ? w / 2 : w, plane = ho * wo
        let inPlace = addend.map { UnsafeMutablePointer(mutating: $0) == dX } ?? false
        /// dX's plane `ch` of sample b before its gradient is added: the addend's, or zeros.
        @inline(__always) func startPlane(_ b: Int, _ ch: Int) {
            guard let dX else { return }
            let at = (b * c + ch) * h * w
            if let addend { if !inPlace { (dX + at).update(from: addend + at, count: h * w) } } else { (dX + at).update(repeating: 0, count: h * w) }
        }
        Parallel.forChunks(n * c, grain: 4) { range in
            for job in range {
                let b = job / c, o = job % c, i = o / k, g = o % k
                let src = dOut + job * plane
                if g == 0 {
                    if let dHead {
                        let d = dHead + (b * q + i) * plane
                        Kernels.scale(src, scale, d, count: plane)
                    }
                    // The head channel's slot in dX (channel i of the input) gets nothing from here.
                    startPlane(b, i)
                    continue
                }
                guard let dX else { continue }
                let at = (b * c + g * q + i) * h * w, dst = dX + at
                if stride == 1 {
                    if let addend { Kernels.addScaled(addend + at, src, scale: scale, dst, count: plane) } else { Kernels.scale(src, scale, dst, count: plane) }
                    continue
                }
                let xs = x + at
                startPlane(b, g * q + i)
                // Per window, the first maximum in PyTorch's scan order ((0,0), (0,1), (1,0), (1,1),
                // a later one only where strictly greater) gets 0 + scale·dOut: the zeroed plane's
                // sum, then the addend's. 8 windows at a time: 16 columns of its two rows, split by
                // parity, the maximum's place as a code 0–3 per lane, each place's sum selected in
                // (28×28 → 14×14, C = 16, N = 64, into the addend in place: 0.20 ms against 0.36 ms
                // window by window; min of 20).
                let s8 = SIMD8<Float>(repeating: scale), zero = SIMD8<Float>()
                let codes = (SIMD8<Int32>(), SIMD8<Int32>(repeating: 1), SIMD8<Int32>(repeating: 2), SIMD8<Int32>(repeating: 3))
                for r in 0..<ho {
                    let r0 = xs + 2 * r * w, r1 = r0 + w, d0 = dst + 2 * r * w, d1 = d0 + w
                    var s = 0
                    while s + 8 <= wo {
                        let a = load16(r0 + 2 * s), z = load16(r1 + 2 * s)
                        var m = a.evenHalf, code = codes.0
                        var t = a.oddHalf .> m
                        m.replace(with: a.oddHalf, where: t); code.replace(with: codes.1, where: t)
                        t = z.evenHalf .> m
                        m.replace(with: z.evenHalf, where: t); code.replace(with: codes.2, where: t)
                        code.replace(with: codes.3, where: z.oddHalf .> m)
                        let v = zero + s8 * load8(src + r * wo + s)
                        var top = load16(d0 + 2 * s), bottom = load16(d1 + 2 * s)
                        top.evenHalf.replace(with: top.evenHalf + v, where: code .== codes.0)
                        top.oddHalf.replace(with: top.oddHalf + v, where: code .== codes.1)
                        bottom.evenHalf.replace(with: bottom.evenHalf + v, where: code .== codes.2)
                        bottom.oddHalf.replace(with: bottom.oddHalf + v, where: code .== codes.3)
                        store16(d0 + 2 * s, top); store16(d1 + 2 * s, bottom)
                        s += 8
                    }
                    while s < wo {   // the rest of the row, window by window
                        var best = 2 * s, m = r0[best]
                        if r0[2 * s + 1] > m { m = r0[2 * s + 1]; best = 2 * s + 1 }
                        if r1[2 * s] > m { m = r1[2 * s]; best = w + 2 * s }
                        if r1[2 * s + 1] > m { best = w + 2 * s + 1 }
                        d0[best] += 0 + scale * src[r * wo + s]
                        s += 1
                    }
                }
            }
        }
    }

    /// Reference of `partialMixSum`: each edge's mix whole (`partialMixNaive`), added one edge at a
    /// time over the whole output.
    public static func partialMixSumNaive(_ edges: [PartialEdge], out: UnsafeMutablePointer<Float>, n: Int, c: Int, k: Int, ho: Int, wo: Int) {
        let count = n * c * ho * wo
        var mix = [Float](repeating: 0, count: count)
        for (e, edge) in edges.enumerated() {
            mix.withUnsafeMutableBufferPointer {
                partialMixNaive(head: edge.head, x: edge.x, out: $0.baseAddress!, n: n, c: c, k: k, h: edge.h, w: edge.w, stride: edge.stride)
            }
            for j in 0..<count { out[j] = e == 0 ? edge.scale * mix[j] : out[j] + edge.scale * mix[j] }
        }
    }

    /// Reference: the separate steps (narrow the bypass, max-pool, concat, shuffle).
    public static func partialMixNaive(head: UnsafePointer<Float>, x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                                       n: Int, c: Int, k: Int, h: Int, w: Int, stride: Int) {
        let q = c / k, ho = stride == 2 ? h / 2 : h, wo = stride == 2 ? w / 2 : w, plane = ho * wo
        var cat = [Float](repeating: 0, count: n * c * plane)
        for b in 0..<n {
            for ch in 0..<c {
                for r in 0..<ho {
                    for s in 0..<wo {
                        let v: Float
                        if ch < q { v = head[((b * q + ch) * ho + r) * wo + s] }
                        else if stride == 1 { v = x[((b * c + ch) * h + r) * w + s] }
                        else {
                            var m = -Float.infinity
                            for dr in 0..<2 { for ds in 0..<2 { m = max(m, x[((b * c + ch) * h + 2 * r + dr) * w + 2 * s + ds]) } }
                            v = m
                        }
                        cat[(b * c + ch) * plane + r * wo + s] = v
                    }
                }
            }
        }
        cat.withUnsafeBufferPointer { channelShuffleNaive($0.baseAddress!, out, n: n, c: c, hw: plane, groups: k) }
    }
}
