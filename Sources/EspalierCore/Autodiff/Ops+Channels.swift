// Differentiable channel ops over dim 1 of (N, C, …): concat, narrow, split (a narrow per piece),
// channel shuffle, and the strided zero op. None saves a tensor for backward.

import Foundation

extension Graph {
    /// (N, C, inner) of a rank ≥ 2 shape.
    func channelLayout(_ shape: [Int], _ op: String) throws -> (n: Int, c: Int, inner: Int) {
        guard shape.count >= 2 else { throw EspalierError.shapeMismatch("\(op) needs (N, C, …); got \(shape)") }
        return (shape[0], shape[1], shape.dropFirst(2).reduce(1, *))
    }

    /// Concatenation along channels (dim 1); all inputs agree on every other dimension.
    public func concatChannels(_ xs: [Variable]) throws -> Variable {
        guard let first = xs.first else { throw EspalierError.invalidArgument("concat of no tensors") }
        if xs.count == 1 { return first }
        let (n, _, inner) = try channelLayout(first.shape, "concatChannels")
        for x in xs {
            var a = x.shape, b = first.shape
            guard a.count == b.count else { throw EspalierError.shapeMismatch("concatChannels: \(x.shape) vs \(first.shape)") }
            a[1] = 0; b[1] = 0
            guard a == b else { throw EspalierError.shapeMismatch("concatChannels: \(x.shape) vs \(first.shape)") }
        }
        let channels = xs.map { $0.shape[1] }
        var outShape = first.shape
        outShape[1] = channels.reduce(0, +)
        let y = try output(outShape)
        if computing { Kernels.concatChannels(xs.map { UnsafePointer($0.value.ptr) }, channels: channels, out: y.ptr, n: n, hw: inner) }
        let shapes = xs.map { $0.shape }
        return record(y, inputs: xs) { [unowned self] dY, ctx in
            let grads = try (0..<shapes.count).map { ctx.needs($0) ? try self.gradTensor(shapes[$0]) : nil }
            if ctx.computing { Kernels.splitChannels(dY.ptr, channels: channels, outs: grads.map { $0?.ptr }, n: n, hw: inner) }
            for (i, g) in grads.enumerated() { if let g { try ctx.accumulate(i, g) } }
        }
    }

    /// Channels `range` of x (a copy). Backward adds dY into its slice of x's gradient where it is made.
    public func narrow(_ x: Variable, channels range: Range<Int>) throws -> Variable {
        let (n, c, inner) = try channelLayout(x.shape, "narrow")
        guard range.lowerBound >= 0, range.upperBound <= c, !range.isEmpty else {
            throw EspalierError.invalidArgument("narrow: channels \(range) of \(x.shape)")
        }
        if range.count == c { return x }
        var outShape = x.shape
        outShape[1] = range.count
        let y = try output(outShape)
        if computing {
            Kernels.copyChannels(from: x.value.ptr, srcChannels: c, srcOffset: range.lowerBound,
                                 to: y.ptr, dstChannels: range.count, dstOffset: 0, channels: range.count, n: n, hw: inner)
        }
        let inShape = x.shape
        // dY is added into x's gradient where it is made (the gradient so far, in place where it is
        // x's own: only the narrowed channels are touched); no gradient of x's size is written first.
        return record(y, inputs: [x]) { dY, ctx in
            guard let (out, addend) = try ctx.accumulationTarget(0) else { return }
            precondition(out.shape.reduce(1, *) == inShape.reduce(1, *), "narrow's gradient target \(out.shape) for \(inShape)")
            if ctx.computing {
                Kernels.narrowChannelsBackward(dY.ptr, dX: out.ptr, addend: addend.map { UnsafePointer($0.ptr) }, c: c, offset: range.lowerBound,
                                               channels: range.count, n: n, hw: inner)
            }
        }
    }

    /// Splits x along channels into consecutive pieces of `sizes` channels (Σ sizes = C).
    /// Pieces that receive no gradient contribute zero.
    public func splitChannels(_ x: Variable, sizes: [Int]) throws -> [Variable] {
        let (_, c, _) = try channelLayout(x.shape, "splitChannels")
        guard sizes.allSatisfy({ $0 > 0 }), sizes.reduce(0, +) == c else {
            throw EspalierError.invalidArgument("splitChannels: sizes \(sizes) for \(c) channels")
        }
        var offset = 0
        return try sizes.map { size in
            defer { offset += size }
            return try narrow(x, channels: offset..<(offset + size))
        }
    }

    /// Channel shuffle with `groups` groups: (N, g, C/g, …) → transpose → (N, C/g, g, …).
    public func channelShuffle(_ x: Variable, groups: Int) throws -> Variable {
        let (n, c, inner) = try channelLayout(x.shape, "channelShuffle")
        guard groups > 0, c % groups == 0 else {
            throw EspalierError.invalidArgument("channelShuffle: \(c) channels are not divisible by \(groups) groups")
        }
        if groups == 1 || groups == c { return x }
        let y = try output(x.shape)
        if computing { Kernels.channelShuffle(x.value.ptr, y.ptr, n: n, c: c, hw: inner, groups: groups) }
        let shape = x.shape
        return record(y, inputs: [x]) { [unowned self] dY, ctx in
            let dX = try self.gradTensor(shape)
            if ctx.computing { Kernels.channelShuffle(dY.ptr, dX.ptr, n: n, c: c, hw: inner, groups: c / groups) }
            try ctx.accumulate(0, dX)
        }
    }

    /// The `none` op: zeros of shape (N, C, ⌈H/stride⌉, ⌈W/stride⌉) for x (N, C, H, W); no gradient.
    public func zeros(like x: Variable, stride: Int = 1) throws -> Variable {
        guard x.shape.count == 4 else { throw EspalierError.shapeMismatch("zeros(like:) needs x (N,C,H,W); got \(x.shape)") }
        guard stride > 0 else { throw EspalierError.invalidArgument("zeros(like:) stride \(stride)") }
        let s = x.shape
        return try zeros([s[0], s[1], (s[2] + stride - 1) / stride, (s[3] + stride - 1) / stride])
    }
}

extension Graph {
    /// y = x · w[c] per channel: x (N, C, …), w (C). Saves x (for dw) and w (for dx).
    public func channelScale(_ x: Variable, _ w: Variable) throws -> Variable {
        guard x.shape.count >= 2, w.value.count == x.shape[1] else {
            throw EspalierError.shapeMismatch("channelScale of \(x.shape) by \(w.shape): needs one weight per channel")
        }
        let n = x.shape[0], c = x.shape[1], hw = x.value.count / max(n * c, 1)
        let y = try output(x.shape)
        if computing { Kernels.channelScaleForward(x.value.ptr, w.value.ptr, y.ptr, n: n, c: c, hw: hw) }
        flops += y.count
        let xValue = x.value, wValue = w.value
        return record(y, inputs: [x, w]) { [unowned self] dY, ctx in
            let dX = ctx.needs(0) ? try self.gradTensor(xValue.shape) : nil
            var dW: Tensor? = nil, dWIsTemp = false
            if ctx.needs(1) {
                if let pg = try ctx.parameterGrad(1) { dW = pg } else { dW = try self.gradTensor(wValue.shape, zeroed: true); dWIsTemp = true }
            }
            if ctx.computing {
                Kernels.channelScaleBackward(xValue.ptr, wValue.ptr, dY.ptr, dX: dX?.ptr, dW: dW?.ptr, n: n, c: c, hw: hw)
            }
            if let dX { try ctx.accumulate(0, dX) }
            if dWIsTemp, let dW { try ctx.accumulate(1, dW) }
        }
    }
}

extension Graph {
    /// x[:, :, top..<top+height, left..<left+width] of x (N, C, H, W); nil height/width = to the edge.
    public func crop(_ x: Variable, top: Int, left: Int, height: Int? = nil, width: Int? = nil) throws -> Variable {
        guard x.shape.count == 4 else { throw EspalierError.shapeMismatch("crop needs (N, C, H, W), got \(x.shape)") }
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let oh = height ?? (h - top), ow = width ?? (w - left)
        guard top >= 0, left >= 0, oh > 0, ow > 0, top + oh <= h, left + ow <= w else {
            throw EspalierError.invalidArgument("crop [\(top)..<\(top + oh), \(left)..<\(left + ow)] outside \(h)×\(w)")
        }
        let y = try output([n, c, oh, ow])
        if computing { Kernels.cropForward(x.value.ptr, y.ptr, planes: n * c, h: h, w: w, top: top, left: left, outH: oh, outW: ow) }
        let inShape = x.shape
        return record(y, inputs: [x]) { [unowned self] dY, ctx in
            let dX = try self.gradTensor(inShape)
            if ctx.computing { Kernels.cropBackward(dY.ptr, dX.ptr, planes: n * c, h: h, w: w, top: top, left: left, outH: oh, outW: ow) }
            try ctx.accumulate(0, dX)
        }
    }
}

extension Graph {
    /// A PC-DARTS node: Σ_e w[indices[e]]·mix(heads[e], xs[e]) (w nil: plain sum), where mix is
    /// one edge's output — `head` (N, C/K, H', W') = the ops on x's first C/K channels, the other
    /// channels of x (N, C, H, W) bypassing them (2×2 max-pool at stride 2), concat + shuffle (K
    /// groups) — all edges written straight into the node in one pass (Kernels.partialMixSum), so
    /// no edge output is ever materialised; backward adds each edge's dX into x's gradient as it
    /// is stored. Saves the heads (C/K channels) only when w needs a gradient; the xs are node
    /// states, alive anyway.
    public func partialNode(heads: [Variable], xs: [Variable], strides: [Int], groups k: Int, weights w: Variable?, indices: [Int]) throws -> Variable {
        guard !heads.isEmpty, heads.count == xs.count, xs.count == strides.count, w == nil || indices.count == heads.count else {
            throw EspalierError.invalidArgument("partialNode: \(heads.count) heads, \(xs.count) inputs, \(strides.count) strides, \(indices.count) weight indices")
        }
        var outShape: [Int]? = nil
        for (e, (head, x)) in zip(heads, xs).enumerated() {
            let s = strides[e]
            guard x.shape.count == 4, x.shape[1] % k == 0, s == 1 || s == 2 else {
                throw EspalierError.invalidArgument("partialNode: input \(x.shape), K \(k), stride \(s)")
            }
            let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
            let shape = [n, c, s == 2 ? h / 2 : h, s == 2 ? wd / 2 : wd]
            guard head.shape == [n, c / k, shape[2], shape[3]], outShape == nil || outShape! == shape else {
                throw EspalierError.shapeMismatch("partialNode: edge \(e): the ops give \(head.shape), the bypass \(shape)"
                                                  + (s == 2 && h % 2 == 1 ? " (odd size \(h)×\(wd) at a reduction: the 2×2 max-pool floors it)" : ""))
            }
            outShape = shape
        }
        let y = try output(outShape!)
        let wValue = w?.value
        func scale(_ e: Int) -> Float { wValue.map { $0[indices[e]] } ?? 1 }
        if computing {
            let edges = heads.indices.map { e in
                Kernels.PartialEdge(head: heads[e].value.ptr, x: xs[e].value.ptr, h: xs[e].shape[2], w: xs[e].shape[3], stride: strides[e], scale: scale(e))
            }
            Kernels.partialMixSum(edges, out: y.ptr, n: outShape![0], c: outShape![1], k: k, ho: outShape![2], wo: outShape![3])
        }
        let xValues = xs.map(\.value)
        let savedHeads: [Tensor]? = (w?.requiresGrad ?? false) ? heads.map(\.value) : nil
        let headShapes = heads.map(\.shape)
        let m = heads.count
        return record(y, inputs: heads + xs + (w.map { [$0] } ?? [])) { [unowned self] dY, ctx in
            for e in 0..<m {
                let x = xValues[e]
                let dHead = ctx.needs(e) ? try self.gradTensor(headShapes[e]) : nil
                // dX is added into x's gradient as it is stored (the gradient so far, in place where
                // it is x's own): no gradient of x's size is written and then added.
                let target = try ctx.accumulationTarget(m + e)
                if ctx.computing && (dHead != nil || target != nil) {
                    Kernels.partialMixBackward(dOut: dY.ptr, x: x.ptr, dHead: dHead?.ptr, dX: target?.out.ptr,
                                               addend: target?.addend.map { UnsafePointer($0.ptr) }, n: x.shape[0], c: x.shape[1], k: k,
                                               h: x.shape[2], w: x.shape[3], stride: strides[e], scale: scale(e))
                }
                if let dHead { try ctx.accumulate(e, dHead) }
            }
            if let wValue, ctx.needs(2 * m), let savedHeads {
                let dW = try self.gradTensor(wValue.shape, zeroed: true)
                if ctx.computing {
                    for e in 0..<m {
                        let x = xValues[e]
                        dW[indices[e]] += Float(Kernels.partialMixDot(dOut: dY.ptr, head: savedHeads[e].ptr, x: x.ptr, n: x.shape[0], c: x.shape[1], k: k,
                                                                       h: x.shape[2], w: x.shape[3], stride: strides[e]))
                    }
                }
                try ctx.accumulate(2 * m, dW)
            }
        }
    }
}
