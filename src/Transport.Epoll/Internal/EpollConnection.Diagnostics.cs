namespace Transport.Epoll.Internal;

/// <summary>Tests only: the send side's state in one line, for the failure message of a test that found it stuck.</summary>
internal sealed partial class EpollConnection
{
    /// <summary>Read it on the loop (<see cref="EpollLoop.Schedule"/>): the fields are the loop's.</summary>
    internal string DescribeSendForTest()
    {
        SendFileJob? job = _files?.Job;
        string file = job is null
            ? "no file"
            : $"{(job.ById ? "by-id" : "handler's")} file at {job.StreamPosition}, reached {job.Reached}, done {job.FileDone}";
        ByIdQueue? queue = ById;
        return $"fd {_fd}, send state {_sendState}, read pending {_outputReadPending}, read completed {_readTask.IsCompleted}, "
            + $"sent {_positions.Sent}, {file}, {_files?.DescribeForTest() ?? "no file sender"}, handler files coming {_handlerFilesComing}, "
            + (queue is null ? "not addressable" : $"by-id queue empty {queue.IsEmpty}, held {queue.HeldCount}");
    }
}
