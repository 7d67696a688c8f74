// Softmax cross-entropy over logits (N, K) with integer labels, optional label smoothing
// (target = (1−ε)·onehot + ε/K), and the accuracy helpers (per-row argmax, top-k hits).
// The softmax subtracts each row's maximum. The forward keeps the probabilities, from which
// backward is dLogits = (p − target)·scale with scale = dLoss/N. Serial: N·K is small next to
// any convolution.

import Foundation

extension Kernels {
    /// probs (N, K) = softmax(logits); returns the mean over rows of −Σ_k target_k·log p_k.
    /// Labels must lie in 0..<K (checked by the op).
    public static func softmaxCrossEntropyForward(logits: UnsafePointer<Float>, labels: UnsafePointer<Int32>,
                                                  probs: UnsafeMutablePointer<Float>, n: Int, k: Int,
                                                  labelSmoothing eps: Float = 0) -> Double {
        var total: Double = 0
        for row in 0..<n {
            let z = logits + row * k, p = probs + row * k
            var mx = -Float.infinity
            for j in 0..<k { mx = max(mx, z[j]) }
            var sum: Double = 0
            for j in 0..<k { let e = Foundation.exp(z[j] - mx); p[j] = e; sum += Double(e) }
            let inv = Float(1 / sum)
            for j in 0..<k { p[j] *= inv }
            let logSum = Foundation.log(sum)   // log p_j = z_j − mx − logSum
            let y = Int(labels[row])
            var loss = (1 - Double(eps)) * (logSum - Double(z[y] - mx))
            if eps != 0 {
                var s: Double = 0
                for j in 0..<k { s += logSum - Double(z[j] - mx) }
                loss += Double(eps) / Double(k) * s
            }
            total += loss
        }
        return n > 0 ? total / Double(n) : 0
    }

    /// dLogits (N, K) = (probs − target)·scale, overwritten. For the mean loss, scale = dLoss/N.
    public static func softmaxCrossEntropyBackward(probs: UnsafePointer<Float>, labels: UnsafePointer<Int32>,
                                                   dLogits: UnsafeMutablePointer<Float>, n: Int, k: Int,
                                                   labelSmoothing eps: Float = 0, scale: Float) {
        let off = eps / Float(k)
        for row in 0..<n {
            let p = probs + row * k, d = dLogits + row * k
            for j in 0..<k { d[j] = (p[j] - off) * scale }
            d[Int(labels[row])] -= (1 - eps) * scale
        }
    }

    /// out[row] = the first index of the row's maximum, x (N, K).
    public static func argmaxRows(_ x: UnsafePointer<Float>, n: Int, k: Int, out: UnsafeMutablePointer<Int32>) {
        for row in 0..<n {
            let r = x + row * k
            var best = 0
            for j in 1..<max(k, 1) where r[j] > r[best] { best = j }
            out[row] = Int32(best)
        }
    }

    /// Rows whose label is among the `topK` largest logits (a logit tied with the label's counts
    /// against it only if it comes first). topK = 1 counts argmax hits.
    public static func correctCount(logits: UnsafePointer<Float>, labels: UnsafePointer<Int32>, n: Int, k: Int, topK: Int = 1) -> Int {
        var hits = 0
        for row in 0..<n {
            let r = logits + row * k
            let y = Int(labels[row])
            guard y >= 0, y < k else { continue }
            let v = r[y]
            var ahead = 0
            for j in 0..<k where r[j] > v || (r[j] == v && j < y) { ahead += 1 }
            if ahead < topK { hits += 1 }
        }
        return hits
    }
}

extension Tensor {
    /// Per-row argmax of a (N, K) tensor (first maximum wins); empty in dry-run.
    public func argmaxRows() -> [Int32] {
        guard !isVirtual, rank >= 1, shape[0] > 0 else { return [] }
        let n = shape[0], k = count / n
        var out = [Int32](repeating: 0, count: n)
        out.withUnsafeMutableBufferPointer { Kernels.argmaxRows(ptr, n: n, k: k, out: $0.baseAddress!) }
        return out
    }

    /// How many rows of these (N, K) logits have their label among the top `topK`; 0 in dry-run.
    public func correctCount(labels: [Int32], topK: Int = 1) -> Int {
        guard !isVirtual, rank >= 1, labels.count == shape[0], shape[0] > 0 else { return 0 }
        return labels.withUnsafeBufferPointer {
            Kernels.correctCount(logits: ptr, labels: $0.baseAddress!, n: shape[0], k: count / shape[0], topK: topK)
        }
    }
}
