// Deterministic random numbers: the same seed gives the same stream on every machine.
// xoshiro256** seeded through SplitMix64; normals by Box–Muller. Not cryptographic.

import Foundation

public struct RNG: RandomNumberGenerator, Codable, Equatable, Sendable {
    public var state: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var s = seed
        func splitmix() -> UInt64 {
            s &+= 0x9E37_79B9_7F4A_7C15
            var z = s
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        state = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    public mutating func next() -> UInt64 {
        let result = rotl(state.1 &* 5, 7) &* 9
        let t = state.1 << 17
        state.2 ^= state.0
        state.3 ^= state.1
        state.1 ^= state.2
        state.0 ^= state.3
        state.2 ^= t
        state.3 = rotl(state.3, 45)
        return result
    }

    @inline(__always) private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    /// Uniform in [0, 1).
    public mutating func uniform() -> Float { Float(next() >> 40) * (1.0 / Float(1 << 24)) }
    public mutating func uniformDouble() -> Double { Double(next() >> 11) * (1.0 / Double(UInt64(1) << 53)) }
    /// Uniform integer in 0..<n.
    public mutating func int(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    /// Standard normal.
    public mutating func normal() -> Float {
        let u1 = max(uniformDouble(), 1e-300), u2 = uniformDouble()
        return Float((-2 * Foundation.log(u1)).squareRoot() * cos(2 * Double.pi * u2))
    }
    /// A Gumbel(0, 1) sample.
    public mutating func gumbel() -> Float { Float(-Foundation.log(-Foundation.log(max(uniformDouble(), 1e-20)))) }

    // Codable for checkpoints.
    enum CodingKeys: CodingKey { case s }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let s = try c.decode([UInt64].self, forKey: .s)
        guard s.count == 4 else { throw EspalierError.config("RNG state needs 4 words") }
        state = (s[0], s[1], s[2], s[3])
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode([state.0, state.1, state.2, state.3], forKey: .s)
    }
    public static func == (a: RNG, b: RNG) -> Bool { a.state == b.state }

    /// Fisher–Yates shuffle of 0..<n.
    public mutating func permutation(_ n: Int) -> [Int] {
        var p = Array(0..<n)
        if n > 1 { for i in stride(from: n - 1, to: 0, by: -1) { p.swapAt(i, int(i + 1)) } }
        return p
    }
}

extension Tensor {
    /// Fills with N(0, std²).
    public func fillNormal(std: Float, rng: inout RNG) {
        guard let p = storage.data else { return }
        for i in 0..<count { p[i] = rng.normal() * std }
    }
    /// Fills with U(-bound, bound).
    public func fillUniform(bound: Float, rng: inout RNG) {
        guard let p = storage.data else { return }
        for i in 0..<count { p[i] = (rng.uniform() * 2 - 1) * bound }
    }
}
