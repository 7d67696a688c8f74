// Differentiable ops over the elementwise kernels: add, ReLU, scale by a (learnable) scalar,
// weighted sum of n tensors, zero, reshape, dropout, drop-path. Each op allocates its output
// through the accountant, runs its kernel unless in dry-run, and records a backward closure
// that captures only what backward reads.

import Foundation

extension Graph {
    func checkSameShape(_ a: Variable, _ b: Variable, _ op: String) throws {
        guard a.shape == b.shape else { throw EspalierError.shapeMismatch("\(op): \(a.shape) vs \(b.shape)") }
    }

    /// a + b
    public func add(_ a: Variable, _ b: Variable) throws -> Variable {
        try checkSameShape(a, b, "add")
        let y = try output(a.shape)
        if computing { Kernels.add(a.value.ptr, b.value.ptr, y.ptr, count: y.count) }
        flops += y.count
        return record(y, inputs: [a, b]) { dY, ctx in
            try ctx.accumulate(0, dY)
            try ctx.accumulate(1, dY)
        }
    }

    /// Σ xs (all the same shape).
    public func sum(_ xs: [Variable]) throws -> Variable {
        guard let first = xs.first else { throw EspalierError.invalidArgument("sum of no tensors") }
        if xs.count == 1 { return first }
        for x in xs.dropFirst() { try checkSameShape(first, x, "sum") }
        let y = try output(first.shape)
        if computing {
            y.ptr.update(from: first.value.ptr, count: y.count)
            for x in xs.dropFirst() { Kernels.addInPlace(y.ptr, x.value.ptr, count: y.count) }
        }
        flops += y.count * (xs.count - 1)
        return record(y, inputs: xs) { dY, ctx in
            for i in 0..<xs.count { try ctx.accumulate(i, dY) }
        }
    }

    /// max(x, 0). Saves its output (the input can then be freed). While recording, the ReLU of
    /// a value is computed once and shared by every consumer (see `reluCache`).
    public func relu(_ x: Variable) throws -> Variable {
        // A recomputed segment's input: its ReLU is recorded outside the segment and shared as usual.
        if let segment {
            if segment.isInput(x) { return try segment.hoistedReLU(self, of: x) }
            if let shared = segment.replayedReLU(self, of: x) { return shared }
        }
        if isRecording, x.requiresGrad, let hit = reluCache[ObjectIdentifier(x)], hit.input.value === x { return hit.output }
        let out = try reluUncached(x)
        if isRecording, x.requiresGrad { reluCache[ObjectIdentifier(x)] = (WeakVariable(x), out) }
        return out
    }

    private func reluUncached(_ x: Variable) throws -> Variable {
        let y = try output(x.shape)
        if computing { Kernels.reluForward(x.value.ptr, y.ptr, count: y.count) }
        return record(y, inputs: [x]) { [unowned self] dY, ctx in
            let dX = try self.gradTensor(y.shape)
            if ctx.computing { Kernels.reluBackward(y.ptr, dY.ptr, dX.ptr, count: y.count) }
            try ctx.accumulate(0, dX)
        }
    }

    /// s·x for a constant s.
    public func scale(_ x: Variable, by s: Float) throws -> Variable {
        let y = try output(x.shape)
        if computing { Kernels.scale(x.value.ptr, s, y.ptr, count: y.count) }
        return record(y, inputs: [x]) { dY, ctx in try ctx.accumulateScaled(0, dY, scale: s) }
    }

    /// w[index]·x where `w` is a vector variable (a mixing weight). Saves x for dw.
    public func scale(_ x: Variable, byElement index: Int, of w: Variable) throws -> Variable {
        guard index >= 0, index < w.value.count else { throw EspalierError.invalidArgument("weight index \(index) outside \(w.shape)") }
        let y = try output(x.shape)
        if computing { Kernels.scale(x.value.ptr, w.value[index], y.ptr, count: y.count) }
        let needW = w.requiresGrad
        let xSaved: Tensor? = needW ? x.value : nil
        let wValue = w.value
        return record(y, inputs: [x, w]) { [unowned self] dY, ctx in
            try ctx.accumulateScaled(0, dY, scale: ctx.computing ? wValue[index] : 1)
            if ctx.needs(1), let xs = xSaved {
                let dW = try self.gradTensor(wValue.shape, zeroed: true)
                if ctx.computing { dW[index] = Float(Kernels.dot(dY.ptr, xs.ptr, count: dY.count)) }
                try ctx.accumulate(1, dW)
            }
        }
    }

    /// Σ_k w[k]·xs[k] with w a vector variable of length xs.count (a mixed op's output).
    public func weightedSum(_ xs: [Variable], weights w: Variable) throws -> Variable {
        guard w.value.count == xs.count else { throw EspalierError.shapeMismatch("weighted sum of \(xs.count) tensors with \(w.value.count) weights") }
        return try weightedSum(xs, weights: w, indices: Array(0..<xs.count))
    }

    /// Σ_k w[indices[k]]·xs[k]: w is any weight tensor (e.g. a whole (edges, ops) gate output) and
    /// `indices` picks the flat weight of each term, so a cell node's mixed sum over all its
    /// incoming edges and candidate ops is one op with one output. The gradient reaches exactly the
    /// weights used. Saves the xs only if w needs a gradient.
    public func weightedSum(_ xs: [Variable], weights w: Variable, indices: [Int]) throws -> Variable {
        guard let first = xs.first else { throw EspalierError.invalidArgument("weighted sum of no tensors") }
        guard indices.count == xs.count, indices.allSatisfy({ $0 >= 0 && $0 < w.value.count }) else {
            throw EspalierError.shapeMismatch("weighted sum of \(xs.count) tensors with weight indices \(indices) into \(w.shape)")
        }
        for x in xs.dropFirst() { try checkSameShape(first, x, "weightedSum") }
        let y = try output(first.shape)
        let wValue = w.value
        if computing {
            Kernels.weightedSumForward(xs.map { UnsafePointer($0.value.ptr) }, indices.map { wValue[$0] }, y.ptr, count: y.count)
        }
        flops += 2 * y.count * xs.count
        let saved: [Tensor]? = w.requiresGrad ? xs.map { $0.value } : nil
        // Terms whose op takes its gradient's channel sums (a batch norm's output, which that op
        // keeps anyway): their values are read here in backward, whatever w needs.
        let sumsTaken: [Tensor?] = xs.map { $0.node?.reads.contains(.channelSums) == true && first.shape.count >= 2 ? $0.value : nil }
        return record(y, inputs: xs + [w]) { [unowned self] dY, ctx in
            let k = xs.count
            let takes = (0..<k).map { sumsTaken[$0] != nil && ctx.takesChannelSums($0) }
            if first.shape.count >= 2, takes.contains(true) || (ctx.needs(k) && saved != nil) {
                // One pass over dY and the terms: each taking term's channel sums, and w's gradient
                // (channel by channel, whether or not a term takes its sums: the same bits either way,
                // so a recomputed term, whose op is another node, changes nothing).
                let shape = dY.shape, c = shape[1], hw = shape.dropFirst(2).reduce(1, *)
                let sums = try takes.map { $0 ? try self.gradTensor([4 * c]) : nil }   // 2C Doubles each
                let dW = ctx.needs(k) && saved != nil ? try self.gradTensor(wValue.shape, zeroed: true) : nil
                if ctx.computing {
                    let dots = dW == nil ? nil : UnsafeMutablePointer<Double>.allocate(capacity: k)
                    defer { dots?.deallocate() }
                    Kernels.weightedSumChannelSums(dY.ptr, (0..<k).map { UnsafePointer((saved?[$0] ?? sumsTaken[$0])?.ptr ?? dY.ptr) },
                                                   scales: indices.map { wValue[$0] },
                                                   sums: sums.map { $0.map { UnsafeMutableRawPointer($0.ptr).assumingMemoryBound(to: Double.self) } },
                                                   dots: dots, n: shape[0], c: c, hw: hw)
                    if let dW, let dots { for i in 0..<k { dW[indices[i]] += Float(dots[i]) } }
                }
                if let dW { try ctx.accumulate(k, dW) }
                for i in 0..<k { try ctx.accumulateScaled(i, dY, scale: ctx.computing ? wValue[indices[i]] : 1, channelSums: sums[i]) }
                return
            }
            if ctx.needs(k), let saved {
                let dW = try self.gradTensor(wValue.shape, zeroed: true)
                if ctx.computing {
                    let d = Kernels.dots(dY.ptr, saved.map { UnsafePointer($0.ptr) }, count: dY.count)
                    for i in 0..<k { dW[indices[i]] += Float(d[i]) }
                }
                try ctx.accumulate(k, dW)
            }
            // Each term's gradient is w·dY: handed on with its weight pending where the term's op
            // multiplies as it reads, else added as w·dY in one pass.
            // (A dry run has no weights to read; it makes the same allocations with any factor.)
            for i in 0..<k { try ctx.accumulateScaled(i, dY, scale: ctx.computing ? wValue[indices[i]] : 1) }
        }
    }

    /// Zeros of the given shape (the `none` op); no gradient flows to anything.
    public func zeros(_ shape: [Int]) throws -> Variable {
        let y = try output(shape)
        y.fill(0)
        return untaped(y)
    }

    /// Same storage, new shape.
    public func reshape(_ x: Variable, _ shape: [Int]) throws -> Variable {
        guard shape.reduce(1, *) == x.value.count else { throw EspalierError.shapeMismatch("reshape \(x.shape) to \(shape)") }
        let y = x.value.reshaped(shape)
        let inShape = x.shape
        return record(y, inputs: [x]) { dY, ctx in try ctx.accumulate(0, dY.reshaped(inShape)) }
    }

    /// Inverted dropout with drop probability p (identity in evaluation mode or when p == 0).
    public func dropout(_ x: Variable, p: Float) throws -> Variable {
        guard training, p > 0 else { return x }
        guard p < 1 else { throw EspalierError.invalidArgument("dropout probability \(p) must be below 1") }
        let mask = try Tensor(shape: x.shape, category: .activations, accountant: accountant)
        let y = try output(x.shape)
        if computing {
            Kernels.dropoutMask(mask.ptr, count: mask.count, p: p, rng: &rng)
            Kernels.multiply(x.value.ptr, mask.ptr, y.ptr, count: y.count)
        }
        return record(y, inputs: [x]) { [unowned self] dY, ctx in
            let dX = try self.gradTensor(dY.shape)
            if ctx.computing { Kernels.multiply(dY.ptr, mask.ptr, dX.ptr, count: dY.count) }
            try ctx.accumulate(0, dX)
        }
    }

    /// Drop-path: zeroes whole samples with probability p, scales the rest by 1/(1−p).
    public func dropPath(_ x: Variable, p: Float) throws -> Variable {
        guard training, p > 0 else { return x }
        guard p < 1 else { throw EspalierError.invalidArgument("drop-path probability \(p) must be below 1") }
        let n = x.shape[0], inner = x.value.count / n
        let mask = try Tensor(shape: [n], category: .activations, accountant: accountant)
        let y = try output(x.shape)
        if computing {
            Kernels.dropoutMask(mask.ptr, count: n, p: p, rng: &rng)
            Kernels.perSampleScale(x.value.ptr, mask.ptr, y.ptr, n: n, inner: inner)
        }
        return record(y, inputs: [x]) { [unowned self] dY, ctx in
            let dX = try self.gradTensor(dY.shape)
            if ctx.computing { Kernels.perSampleScale(dY.ptr, mask.ptr, dX.ptr, n: n, inner: inner) }
            try ctx.accumulate(0, dX)
        }
    }
}

extension Graph {
    /// y = x where keep[i], else `value` (e.g. −∞ so a softmax gives masked entries weight 0);
    /// the gradient flows only to the kept entries.
    public func maskedFill(_ x: Variable, keep: [Bool], value: Float) throws -> Variable {
        guard keep.count == x.value.count else { throw EspalierError.shapeMismatch("maskedFill: \(keep.count) mask entries for \(x.shape)") }
        let y = try output(x.shape)
        if computing { for i in 0..<keep.count { y[i] = keep[i] ? x.value[i] : value } }
        return record(y, inputs: [x]) { [unowned self] dY, ctx in
            let dX = try self.gradTensor(dY.shape)
            if ctx.computing { for i in 0..<keep.count { dX[i] = keep[i] ? dY[i] : 0 } }
            try ctx.accumulate(0, dX)
        }
    }
}
