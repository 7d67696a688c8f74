// Small ops over flat parameter vectors, used by the search space: `gather` (picking some
// entries of a tensor, e.g. the mixing weights of the candidates a merged op stands for) and
// `segmentSoftmax` (a softmax over each segment of a vector, e.g. PC-DARTS's edge normalisation
// β̃ over each node's incoming edges). Forward and backward side by side.

extension Graph {
    /// y[i] = x[indices[i]], shape (indices.count). Backward scatter-adds into x.
    public func gather(_ x: Variable, indices: [Int]) throws -> Variable {
        guard indices.allSatisfy({ $0 >= 0 && $0 < x.value.count }) else {
            throw EspalierError.shapeMismatch("gather: indices \(indices) outside a tensor of \(x.value.count) entries")
        }
        let y = try output([indices.count])
        if computing { for (i, j) in indices.enumerated() { y[i] = x.value[j] } }
        let inShape = x.shape
        return record(y, inputs: [x]) { [unowned self] dY, ctx in
            let dX = try self.gradTensor(inShape, zeroed: true)
            if ctx.computing { for (i, j) in indices.enumerated() { dX[j] += dY[i] } }
            try ctx.accumulate(0, dX)
        }
    }

    /// Softmax over each segment of a flat tensor: y[s] = softmax(x[s]) for s in `segments`
    /// (which must tile 0..<count). Backward: dx = y ⊙ (dy − Σ_s y·dy) per segment.
    public func segmentSoftmax(_ x: Variable, segments: [Range<Int>]) throws -> Variable {
        let n = x.value.count
        guard segments.reduce(0, { $0 + $1.count }) == n, segments.allSatisfy({ $0.lowerBound >= 0 && $0.upperBound <= n }) else {
            throw EspalierError.shapeMismatch("segmentSoftmax: segments \(segments) do not tile \(n) entries")
        }
        let y = try output(x.shape)
        if computing {
            for s in segments where !s.isEmpty {
                var m = -Float.infinity
                for i in s { m = max(m, x.value[i]) }
                var sum: Float = 0
                for i in s { let e = (x.value[i] - m).exp(); y[i] = e; sum += e }
                for i in s { y[i] /= sum }
            }
        }
        return record(y, inputs: [x]) { [unowned self] dY, ctx in
            let dX = try self.gradTensor(y.shape)
            if ctx.computing {
                for s in segments {
                    var dot: Float = 0
                    for i in s { dot += y[i] * dY[i] }
                    for i in s { dX[i] = y[i] * (dY[i] - dot) }
                }
            }
            try ctx.accumulate(0, dX)
        }
    }
}

extension Graph {
    /// A scalar (shape [1]) term whose value and gradients were computed outside the graph (a
    /// plugin regularizer on gate weights): forward `value`; backward adds dY·grads[i] into inputs[i].
    public func externalTerm(value: Float, inputs: [Variable], grads: [Tensor]) throws -> Variable {
        guard inputs.count == grads.count, zip(inputs, grads).allSatisfy({ $0.value.count == $1.count }) else {
            throw EspalierError.shapeMismatch("externalTerm: \(grads.map(\.shape)) gradients for inputs \(inputs.map(\.shape))")
        }
        let y = try output([1])
        if computing { y[0] = value }
        return record(y, inputs: inputs) { [unowned self] dY, ctx in
            for (i, g) in grads.enumerated() where ctx.needs(i) {
                let d = try self.gradTensor(g.shape)
                if ctx.computing { Kernels.scale(g.ptr, dY[0], d.ptr, count: g.count) }
                try ctx.accumulate(i, d)
            }
        }
    }
}

extension Float {
    @inline(__always) fileprivate func exp() -> Float { Float(Foundation.exp(Double(self))) }
}

import Foundation
