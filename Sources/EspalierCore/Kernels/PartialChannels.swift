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
    /// Forward. `stride` 1 or 2.
    public static func partialMix(head: UnsafePointer<Float>, x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                                  n: Int, c: Int, k: Int, h: Int, w: Int, stride: Int) {
        let q = c / k, ho = stride == 2 ? h / 2 : h, wo = stride == 2 ? w / 2 : w, plane = ho * wo
        Parallel.forChunks(n * c, grain: 4) { range in
            for job in range {
                let b = job / c, o = job % c, i = o / k, g = o % k
                let dst = out + job * plane
                if g == 0 { dst.update(from: head + (b * q + i) * plane, count: plane); continue }
                let src = x + (b * c + g * q + i) * h * w
                if stride == 1 { dst.update(from: src, count: plane); continue }
                for r in 0..<ho {
                    let r0 = src + 2 * r * w, r1 = r0 + w, d = dst + r * wo
                    for s in 0..<wo { d[s] = max(max(r0[2 * s], r0[2 * s + 1]), max(r1[2 * s], r1[2 * s + 1])) }
                }
            }
        }
    }

    /// Backward: dHead = dOut's head channels (overwritten); dX's bypass channels receive dOut
    /// (through the max-pool), its first C/K channels are zero (overwritten).
    public static func partialMixBackward(dOut: UnsafePointer<Float>, x: UnsafePointer<Float>, dHead: UnsafeMutablePointer<Float>?,
                                          dX: UnsafeMutablePointer<Float>?, n: Int, c: Int, k: Int, h: Int, w: Int, stride: Int) {
        let q = c / k, ho = stride == 2 ? h / 2 : h, wo = stride == 2 ? w / 2 : w, plane = ho * wo
        Parallel.forChunks(n * c, grain: 4) { range in
            for job in range {
                let b = job / c, o = job % c, i = o / k, g = o % k
                let src = dOut + job * plane
                if g == 0 {
                    dHead?.advanced(by: (b * q + i) * plane).update(from: src, count: plane)
                    // The head channel's slot in dX (channel i of the input) gets nothing from here.
                    dX?.advanced(by: (b * c + i) * h * w).update(repeating: 0, count: h * w)
                    continue
                }
                guard let dX else { continue }
                let dst = dX + (b * c + g * q + i) * h * w
                if stride == 1 { dst.update(from: src, count: plane); continue }
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
                        dst[best] += src[r * wo + s]
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
