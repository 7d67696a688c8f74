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

extension Kernels {
    /// Forward: out = scale·mix(head, x), or out += scale·mix(head, x) when `accumulate`
    /// (a node summing its edges, PC-DARTS's β̃ as `scale`). `stride` 1 or 2.
    public static func partialMix(head: UnsafePointer<Float>, x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                                  n: Int, c: Int, k: Int, h: Int, w: Int, stride: Int, scale: Float = 1, accumulate: Bool = false) {
        let q = c / k, ho = stride == 2 ? h / 2 : h, wo = stride == 2 ? w / 2 : w, plane = ho * wo
        Parallel.forChunks(n * c, grain: 4) { range in
            for job in range {
                let b = job / c, o = job % c, i = o / k, g = o % k
                let dst = out + job * plane
                @inline(__always) func put(_ j: Int, _ v: Float) { dst[j] = accumulate ? dst[j] + scale * v : scale * v }
                if g == 0 || stride == 1 {
                    let src = g == 0 ? head + (b * q + i) * plane : x + (b * c + g * q + i) * h * w
                    if !accumulate && scale == 1 { dst.update(from: src, count: plane) } else { for j in 0..<plane { put(j, src[j]) } }
                    continue
                }
                let src = x + (b * c + g * q + i) * h * w
                for r in 0..<ho {
                    let r0 = src + 2 * r * w, r1 = r0 + w
                    for s in 0..<wo { put(r * wo + s, max(max(r0[2 * s], r0[2 * s + 1]), max(r1[2 * s], r1[2 * s + 1]))) }
                }
            }
        }
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
    public static func partialMixBackward(dOut: UnsafePointer<Float>, x: UnsafePointer<Float>, dHead: UnsafeMutablePointer<Float>?,
                                          dX: UnsafeMutablePointer<Float>?, n: Int, c: Int, k: Int, h: Int, w: Int, stride: Int, scale: Float = 1) {
        let q = c / k, ho = stride == 2 ? h / 2 : h, wo = stride == 2 ? w / 2 : w, plane = ho * wo
        Parallel.forChunks(n * c, grain: 4) { range in
            for job in range {
                let b = job / c, o = job % c, i = o / k, g = o % k
                let src = dOut + job * plane
                if g == 0 {
                    if let dHead {
                        let d = dHead + (b * q + i) * plane
                        if scale == 1 { d.update(from: src, count: plane) } else { for j in 0..<plane { d[j] = scale * src[j] } }
                    }
                    // The head channel's slot in dX (channel i of the input) gets nothing from here.
                    dX?.advanced(by: (b * c + i) * h * w).update(repeating: 0, count: h * w)
                    continue
                }
                guard let dX else { continue }
                let dst = dX + (b * c + g * q + i) * h * w
                if stride == 1 {
                    if scale == 1 { dst.update(from: src, count: plane) } else { for j in 0..<plane { dst[j] = scale * src[j] } }
                    continue
                }
                let xs = x + (b * c + g * q + i) * h * w
                dst.update(repeating: 0, count: h * w)
                for r in 0..<ho {
                    for s in 0..<wo {
                        // The first maximum of the window, in PyTorch's scan order.
                        var best = 2 * r * w + 2 * s, m = xs[best]
                        for (dr, ds) in [(0, 1), (1, 0), (1, 1)] {
                            let p = (2 * r + dr) * w + 2 * s + ds
                            if xs[p] > m { m = xs[p]; best = p }
                        }
                        dst[best] += scale * src[r * wo + s]
                    }
                }
            }
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
