// The memory accountant: tagging, peaks, budgets, and the dry-run prediction of a step's peak.

import EspalierCore
import EspalierTestSupport
import XCTest

final class AccountantTests: XCTestCase {
    /// A small two-layer conv net with one SGD step, built and run against `acc`.
    private func step(on acc: MemoryAccountant) throws -> (peak: Int, allocations: Int) {
        let f = ParameterFactory(accountant: acc, seed: 1)
        let c1 = try Conv2d(f, name: "conv1", cIn: 3, cOut: 8, kernel: 3, padding: 1)
        let dw = try Conv2d(f, name: "dw", cIn: 8, cOut: 8, kernel: 3, padding: 2, dilation: 2, groups: 8)
        let pw = try Conv2d(f, name: "pw", cIn: 8, cOut: 4, kernel: 1)
        let opt = try SGD(parameters: c1.parameters + dw.parameters + pw.parameters, learningRate: 0.1, momentum: 0.9)
        let batch = try acc.withOwner("data") { try Tensor.zeros([4, 3, 10, 10], category: .data, accountant: acc) }
        var rng = RNG(seed: 3)
        batch.fillUniform(bound: 1, rng: &rng)
        acc.resetPeak()
        let before = acc.allocationCount
        let g = Graph(accountant: acc)
        let h = try acc.withOwner("block") { try g.relu(try c1(g, g.constant(batch))) }
        let y = try acc.withOwner("block") { try pw(g, try g.relu(try dw(g, h))) }
        let dY = try Tensor.filled(y.shape, value: 0.01, category: .activationGradients, accountant: acc)
        try g.backward(y, gradient: dY)
        opt.step()
        return (acc.peakTotal, acc.allocationCount - before)
    }

    func testDryRunPrediction_EqualsMeasuredPeakOfRealStep() throws {
        let dry = MemoryAccountant(mode: .dryRun)
        let predicted = try step(on: dry)
        let real = MemoryAccountant()
        let measured = try step(on: real)
        XCTAssertGreaterThan(measured.peak, 0)
        XCTAssertEqual(predicted.peak, measured.peak, "dry-run peak must equal the real peak")
        XCTAssertEqual(predicted.allocations, measured.allocations)
        XCTAssertEqual(dry.peakByCategory, real.peakByCategory)
        XCTAssertNil(dry.invariantViolation())
        XCTAssertNil(real.invariantViolation())
    }

    func testEverythingFreed_AfterStepExceptPersistentState() throws {
        let acc = MemoryAccountant()
        _ = try step(on: acc)
        // Everything the step made is gone once its objects are: nothing leaks into later steps.
        XCTAssertEqual(acc.currentTotal, 0)
        XCTAssertNoThrow(try acc.checkInvariants(), "every owner and category back at 0")
    }

    func testBudgetViolation_NamesOwnerSizeAndBudget_AndLeavesNoPartialState() throws {
        let acc = MemoryAccountant(budget: 10_000)
        let a = try acc.withOwner("cell3/edge7") { try Tensor(shape: [1000], category: .activations, accountant: acc) }
        XCTAssertEqual(acc.currentTotal, 4000)
        XCTAssertThrowsError(try acc.withOwner("cell3/edge7/sep_conv_5x5") {
            try Tensor(shape: [2000], category: .activations, accountant: acc)
        }) { error in
            guard let e = error as? MemoryBudgetExceeded else { return XCTFail("wrong error \(error)") }
            XCTAssertEqual(e.owner, "cell3/edge7/sep_conv_5x5")
            XCTAssertEqual(e.requestedBytes, 8000)
            XCTAssertEqual(e.budgetBytes, 10_000)
            let text = "\(e)"
            XCTAssertTrue(text.contains("cell3/edge7/sep_conv_5x5") && text.contains("7.81 KiB") && text.contains("9.77 KiB"), text)
        }
        XCTAssertEqual(acc.currentTotal, 4000, "a refused allocation records nothing")
        XCTAssertNil(acc.invariantViolation())
        _ = a
    }

    func testBudgetViolation_InsideAGraphStep_IsAnError() throws {
        let real = MemoryAccountant()
        let need = try step(on: real).peak
        let tight = MemoryAccountant(budget: need - 1)
        XCTAssertThrowsError(try step(on: tight)) { XCTAssertTrue($0 is MemoryBudgetExceeded) }
        XCTAssertEqual(tight.currentTotal, 0, "a failed step releases everything it took")
        XCTAssertNil(tight.invariantViolation())
        let exact = MemoryAccountant(budget: need)
        XCTAssertNoThrow(try step(on: exact))
    }

    func testOwnerPrefixes_AndCategories() throws {
        let acc = MemoryAccountant()
        let t1 = try acc.withOwner("cell0") { try acc.withOwner("edge1") { try Tensor(shape: [10], category: .activations, accountant: acc) } }
        let t2 = try acc.withOwner("cell0") { try Tensor(shape: [5], category: .parameters, accountant: acc) }
        let t3 = try acc.withOwner("cell01") { try Tensor(shape: [7], category: .parameters, accountant: acc) }
        XCTAssertEqual(acc.currentBytes(ownerPrefix: "cell0").total, 60)      // not cell01
        XCTAssertEqual(acc.currentBytes(ownerPrefix: "cell0")[.activations], 40)
        XCTAssertEqual(acc.currentBytes(ownerPrefix: "cell0/edge1").total, 40)
        XCTAssertEqual(acc.current[.parameters], 48)
        let table = acc.ownerTable()
        XCTAssertEqual(Set(table.map { $0.owner }), ["cell0/edge1", "cell0", "cell01"])
        _ = (t1, t2, t3)
        let peak = acc.peakTotal
        XCTAssertEqual(peak, 88)
        XCTAssertNil(acc.invariantViolation(), "Σ per owner = current, per category")
    }

    func testPeakByCategory_IsTheBreakdownAtThePeakMoment() throws {
        let acc = MemoryAccountant()
        do {
            let a = try Tensor(shape: [100], category: .activations, accountant: acc)
            let w = try Tensor(shape: [50], category: .workspace, accountant: acc)
            _ = (a, w)
        }
        let p = try Tensor(shape: [10], category: .parameters, accountant: acc)
        XCTAssertEqual(acc.peakTotal, 600)
        XCTAssertEqual(acc.peakByCategory[.activations], 400)
        XCTAssertEqual(acc.peakByCategory[.workspace], 200)
        XCTAssertEqual(acc.peakByCategory[.parameters], 0)
        XCTAssertEqual(acc.peakBytes(ownerPrefix: "").total, 600)
        XCTAssertNil(acc.invariantViolation())
        _ = p
    }

    func testParseBytes() {
        XCTAssertEqual(parseBytes("1.5GiB"), 1_610_612_736)
        XCTAssertEqual(parseBytes("512MB"), 512 << 20)
        XCTAssertEqual(parseBytes("2048"), 2048)
        XCTAssertNil(parseBytes("lots"))
    }
}

/// The buffer pool behind real storages (BufferPool.swift).
final class BufferPoolTests: XCTestCase {
    func testFreedBufferIsReusedForTheSameSize_AndPoolStaysUnderTheLifetimePeak() throws {
        let acc = MemoryAccountant()
        let n = 1 << 16   // 256 KiB: pooled
        var a: Tensor? = try Tensor(shape: [n], category: .activations, accountant: acc)
        a!.fill(3)
        let p = a!.ptr
        a = nil
        XCTAssertEqual(acc.pooledBytes, n * 4, "a freed large buffer waits in the pool")
        XCTAssertEqual(acc.currentTotal, 0, "but is not counted as in use")
        let b = try Tensor(shape: [n], category: .activations, accountant: acc)
        XCTAssertEqual(b.ptr, p, "the next tensor of that size gets the same buffer")
        XCTAssertEqual(acc.poolCounters.hits, 1)
        XCTAssertEqual(acc.pooledBytes, 0)
        // A different size at the cap: the idle buffer is unmapped first, so that in use +
        // pooled stays within the cap (the most ever in use at once, plus 1/16).
        do { _ = try Tensor(shape: [n], category: .activations, accountant: acc) }   // allocated and freed
        XCTAssertEqual(acc.currentTotal + acc.pooledBytes, 2 * n * 4)
        let d = try Tensor(shape: [2 * n], category: .activations, accountant: acc)
        XCTAssertLessThanOrEqual(acc.currentTotal + acc.pooledBytes, acc.lifetimePeak + acc.lifetimePeak / 16)
        XCTAssertEqual(acc.poolCounters.unmaps, 1)
        d.fill(1)
        XCTAssertEqual(d[2 * n - 1], 1)
        _ = b
        acc.releaseIdleBuffers()
        XCTAssertEqual(acc.pooledBytes, 0)
    }

    func testBestFit_LendsAnIdleBufferUpToTwiceTheSize_CountsItsSlack_AndTakesItBack() throws {
        let acc = MemoryAccountant()
        let n = 1 << 16   // 256 KiB
        var big: Tensor? = try Tensor(shape: [2 * n], category: .activations, accountant: acc)
        let p = big!.ptr
        big = nil
        XCTAssertEqual(acc.pooledBytes, 2 * n * 4)
        // 1.5 n fits in the idle 2 n buffer: lent, no new mapping, the extra 0.5 n counted as slack.
        var mid: Tensor? = try Tensor(shape: [3 * n / 2], category: .activations, accountant: acc)
        XCTAssertEqual(mid!.ptr, p)
        XCTAssertEqual(acc.poolCounters.maps, 1)
        XCTAssertEqual(acc.pooledSlackBytes, n / 2 * 4)
        XCTAssertEqual(acc.currentTotal + acc.pooledSlackBytes + acc.pooledBytes, 2 * n * 4, "lending a larger buffer adds no memory")
        mid!.fill(2)
        XCTAssertEqual(mid![3 * n / 2 - 1], 2)
        mid = nil
        XCTAssertEqual(acc.pooledSlackBytes, 0)
        XCTAssertEqual(acc.pooledBytes, 2 * n * 4, "it goes back to the bucket of its real size")
        var again: Tensor? = try Tensor(shape: [2 * n], category: .activations, accountant: acc)
        XCTAssertEqual(again!.ptr, p, "an exact request finds it there")
        again = nil
        // Less than half its size does not take it: a new mapping.
        let small = try Tensor(shape: [n / 2], category: .activations, accountant: acc)
        XCTAssertEqual(acc.poolCounters.maps, 2)
        XCTAssertEqual(acc.pooledSlackBytes, 0)
        _ = (again, small)
    }

    func testSmallBuffers_BypassThePool() throws {
        let acc = MemoryAccountant()
        var t: Tensor? = try Tensor(shape: [100], category: .activations, accountant: acc)
        t = nil
        XCTAssertEqual(acc.pooledBytes, 0)
        XCTAssertEqual(acc.poolCounters.maps, 0)
        _ = t
    }
}
