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
    /// One PC-DARTS edge of `partialMixSum`: its ops' head, its input x (H, W) and stride, and its weight.
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
                            if e == 0 { scaleRow(src, scale, dst, count: plane) } else { addScaledRow(dst, src, scale, dst, count: plane) }
                            continue
                        }
                        let src = edge.x + (b * c + g * q + i) * h * w
                        for r in 0..<ho {
                            let r0 = src + 2 * r * w, r1 = r0 + w
                            for s in 0..<wo {
                                let v = max(max(r0[2 * s], r0[2 * s + 1]), max(r1[2 * s], r1[2 * s + 1]))
                                dst[r * wo + s] = e == 0 ? scale * v : dst[r * wo + s] + scale * v
                            }
                        }
                    }
                }
            }
        }
    }

    /// dst = scale·src (a copy where scale is 1: the same floats), SIMD8, inline: one plane.
    @inline(__always)
    static func scaleRow(_ src: UnsafePointer<Float>, _ scale: Float, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        if scale == 1 { dst.update(from: src, count: count); return }
        let s8 = SIMD8<Float>(repeating: scale)
        var j = 0
        while j + 8 <= count { store8(dst + j, s8 * load8(src + j)); j += 8 }
        while j < count { dst[j] = scale * src[j]; j += 1 }
    }

    /// dst = a + scale·src (the product rounded, then the sum), SIMD8, inline; dst may be a.
    @inline(__always)
    static func addScaledRow(_ a: UnsafePointer<Float>, _ src: UnsafePointer<Float>, _ scale: Float, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        let s8 = SIMD8<Float>(repeating: scale)
        var j = 0
        while j + 8 <= count { store8(dst + j, load8(a + j) + s8 * load8(src + j)); j += 8 }
        while j < count { dst[j] = a[j] + scale * src[j]; j += 1 }
    }

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
                        scaleRow(src, scale, d, count: plane)
                    }
                    // The head channel's slot in dX (channel i of the input) gets nothing from here.
                    startPlane(b, i)
                    continue
                }
                guard let dX else { continue }
                let at = (b * c + g * q + i) * h * w, dst = dX + at
                if stride == 1 {
                    if let addend { addScaledRow(addend + at, src, scale, dst, count: plane) } else { scaleRow(src, scale, dst, count: plane) }
                    continue
                }
                let xs = x + at
                startPlane(b, g * q + i)
                for r in 0..<ho {
                    for s in 0..<wo {
                        // The first maximum of the window, in PyTorch's scan order.
                        var best = 2 * r * w + 2 * s, m = xs[best]
                        for (dr, ds) in [(0, 1), (1, 0), (1, 1)] {
                            let p = (2 * r + dr) * w + 2 * s + ds
                            if xs[p] > m { m = xs[p]; best = p }
                        }
                        dst[best] += 0 + scale * src[r * wo + s]   // the zeroed plane's 0 + scale·dOut, then the addend's sum
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
