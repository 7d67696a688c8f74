// Channel rearrangements over (N, C, HW): block copies between channel ranges (concat, narrow
// and their backward passes) and channel shuffle. Each sample is a run of contiguous blocks, so
// every kernel is a sequence of memcpys, split across cores by sample; naive references beside.
// Backward kernels overwrite their outputs.

import Foundation

extension Kernels {
    /// dst[s, dstOffset + j] = src[s, srcOffset + j] for j in 0..<channels, every sample s.
    /// src has `srcChannels` channels, dst `dstChannels`; each channel is `hw` floats.
    public static func copyChannels(from src: UnsafePointer<Float>, srcChannels: Int, srcOffset: Int,
                                    to dst: UnsafeMutablePointer<Float>, dstChannels: Int, dstOffset: Int,
                                    channels: Int, n: Int, hw: Int) {
        let block = channels * hw
        forItems(n, itemSize: block) { s in
            (dst + (s * dstChannels + dstOffset) * hw).update(from: src + (s * srcChannels + srcOffset) * hw, count: block)
        }
    }

    /// out (N, Σc, HW) = xs[0] ‖ xs[1] ‖ … along channels; xs[i] is (N, channels[i], HW).
    public static func concatChannels(_ xs: [UnsafePointer<Float>], channels: [Int], out: UnsafeMutablePointer<Float>, n: Int, hw: Int) {
        let total = channels.reduce(0, +)
        forItems(n, itemSize: total * hw) { s in
            var dst = out + s * total * hw
            for (x, ci) in zip(xs, channels) {
                dst.update(from: x + s * ci * hw, count: ci * hw)
                dst += ci * hw
            }
        }
    }

    /// The inverse of `concatChannels`: outs[i] (N, channels[i], HW) = y's channel slice i (nil: skipped).
    public static func splitChannels(_ y: UnsafePointer<Float>, channels: [Int], outs: [UnsafeMutablePointer<Float>?], n: Int, hw: Int) {
        let total = channels.reduce(0, +)
        forItems(n, itemSize: total * hw) { s in
            var src = y + s * total * hw
            for (o, ci) in zip(outs, channels) {
                o?.advanced(by: s * ci * hw).update(from: src, count: ci * hw)
                src += ci * hw
            }
        }
    }

    /// The gradient of `narrow` (channels offset..<offset+channels of x, (N, c, HW)), added into x's
    /// gradient where it is made: dX = addend + [0 ‖ dY ‖ 0] along channels. Without `addend`, the
    /// channels outside the range are zeroed; with one, dX's range is addend + dY and the rest is
    /// the addend's (copied, unless `addend` is dX itself, in place: then only the range is touched).
    public static func narrowChannelsBackward(_ dY: UnsafePointer<Float>, dX: UnsafeMutablePointer<Float>, addend: UnsafePointer<Float>? = nil,
                                              c: Int, offset: Int, channels: Int, n: Int, hw: Int) {
        let inPlace = addend.map { UnsafeMutablePointer(mutating: $0) == dX } ?? false
        forItems(n, itemSize: (inPlace ? channels : c) * hw) { s in
            let dx = dX + s * c * hw, dy = dY + s * channels * hw
            let before = offset * hw, after = (offset + channels) * hw, rest = (c - offset - channels) * hw
            if let addend {
                let a = addend + s * c * hw
                if !inPlace {
                    dx.update(from: a, count: before)
                    (dx + after).update(from: a + after, count: rest)
                }
                add(a + before, dy, dx + before, count: channels * hw)   // inside a chunk: runs on this thread
            } else {
                dx.update(repeating: 0, count: before)
                (dx + before).update(from: dy, count: channels * hw)
                (dx + after).update(repeating: 0, count: rest)
            }
        }
    }

    /// Channel shuffle: view x as (N, groups, C/groups, HW), swap the two channel axes:
    /// y[s, i·groups + g] = x[s, g·(C/groups) + i]. Its inverse is the shuffle with C/groups groups.
    public static func channelShuffle(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, n: Int, c: Int, hw: Int, groups: Int) {
        let perGroup = c / groups
        forItems(n, itemSize: c * hw) { s in
            let xs = x + s * c * hw, ys = y + s * c * hw
            for g in 0..<groups {
                for i in 0..<perGroup {
                    (ys + (i * groups + g) * hw).update(from: xs + (g * perGroup + i) * hw, count: hw)
                }
            }
        }
    }

    // MARK: - Naive references

    public static func copyChannelsNaive(from src: UnsafePointer<Float>, srcChannels: Int, srcOffset: Int,
                                         to dst: UnsafeMutablePointer<Float>, dstChannels: Int, dstOffset: Int,
                                         channels: Int, n: Int, hw: Int) {
        for s in 0..<n {
            for j in 0..<channels {
                for i in 0..<hw {
                    dst[(s * dstChannels + dstOffset + j) * hw + i] = src[(s * srcChannels + srcOffset + j) * hw + i]
                }
            }
        }
    }

    public static func concatChannelsNaive(_ xs: [UnsafePointer<Float>], channels: [Int], out: UnsafeMutablePointer<Float>, n: Int, hw: Int) {
        let total = channels.reduce(0, +)
        var offset = 0
        for (x, ci) in zip(xs, channels) {
            copyChannelsNaive(from: x, srcChannels: ci, srcOffset: 0, to: out, dstChannels: total, dstOffset: offset, channels: ci, n: n, hw: hw)
            offset += ci
        }
    }

    public static func splitChannelsNaive(_ y: UnsafePointer<Float>, channels: [Int], outs: [UnsafeMutablePointer<Float>?], n: Int, hw: Int) {
        let total = channels.reduce(0, +)
        var offset = 0
        for (o, ci) in zip(outs, channels) {
            if let o { copyChannelsNaive(from: y, srcChannels: total, srcOffset: offset, to: o, dstChannels: ci, dstOffset: 0, channels: ci, n: n, hw: hw) }
            offset += ci
        }
    }

    public static func narrowChannelsBackwardNaive(_ dY: UnsafePointer<Float>, dX: UnsafeMutablePointer<Float>, addend: UnsafePointer<Float>? = nil,
                                                   c: Int, offset: Int, channels: Int, n: Int, hw: Int) {
        for s in 0..<n {
            for ch in 0..<c {
                for i in 0..<hw {
                    let j = (s * c + ch) * hw + i
                    let inside = ch >= offset && ch < offset + channels
                    let g = inside ? dY[(s * channels + ch - offset) * hw + i] : 0
                    dX[j] = addend.map { inside ? $0[j] + g : $0[j] } ?? g
                }
            }
        }
    }

    public static func channelShuffleNaive(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, n: Int, c: Int, hw: Int, groups: Int) {
        let perGroup = c / groups
        for s in 0..<n {
            for outC in 0..<c {
                let i = outC / groups, g = outC % groups
                let inC = g * perGroup + i
                for p in 0..<hw { y[(s * c + outC) * hw + p] = x[(s * c + inC) * hw + p] }
            }
        }
    }
}

// MARK: - Per-channel scale (channel masks, learnable per-channel scales)

extension Kernels {
    /// y[n, c, i] = x[n, c, i] · w[c]   — x, y: (N, C, HW), w: (C)
    public static func channelScaleForward(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, n: Int, c: Int, hw: Int) {
        Parallel.forChunks(n * c) { r in
            for plane in r {
                let s = w[plane % c], xp = x + plane * hw, yp = y + plane * hw
                for i in 0..<hw { yp[i] = s * xp[i] }
            }
        }
    }

    /// dX = dY · w[c] (overwrite, if non-nil); dW[c] += Σ_{n,i} dY·x (if non-nil).
    public static func channelScaleBackward(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ dY: UnsafePointer<Float>,
                                            dX: UnsafeMutablePointer<Float>?, dW: UnsafeMutablePointer<Float>?, n: Int, c: Int, hw: Int) {
        if let dX { channelScaleForward(dY, w, dX, n: n, c: c, hw: hw) }
        if let dW {
            Parallel.forChunks(c) { r in
                for ch in r {
                    var acc: Double = 0
                    for s in 0..<n { acc += dot(dY + (s * c + ch) * hw, x + (s * c + ch) * hw, count: hw) }
                    dW[ch] += Float(acc)
                }
            }
        }
    }
}

// MARK: - Spatial crop (FactorizedReduce's x[:, :, 1:, 1:])

extension Kernels {
    /// y (N, C, h, w) = x (N, C, H, W)[:, :, top..<top+h, left..<left+w]
    public static func cropForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, planes: Int, h: Int, w: Int,
                                   top: Int, left: Int, outH: Int, outW: Int) {
        Parallel.forChunks(planes) { r in
            for p in r {
                let xp = x + p * h * w, yp = y + p * outH * outW
                for i in 0..<outH { (yp + i * outW).update(from: xp + (top + i) * w + left, count: outW) }
            }
        }
    }

    /// dX = 0 outside the crop, dY inside (overwrites dX).
    public static func cropBackward(_ dY: UnsafePointer<Float>, _ dX: UnsafeMutablePointer<Float>, planes: Int, h: Int, w: Int,
                                    top: Int, left: Int, outH: Int, outW: Int) {
        Parallel.forChunks(planes) { r in
            for p in r {
                let dxp = dX + p * h * w, dyp = dY + p * outH * outW
                dxp.update(repeating: 0, count: h * w)
                for i in 0..<outH { (dxp + (top + i) * w + left).update(from: dyp + i * outW, count: outW) }
            }
        }
    }
}
