using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Options;

namespace WebApp;

/// <summary>The start-up failures that are the user's to fix, as one line each; anything else stays a crash.</summary>
internal static class StartupFailure
{
    public static string? Describe(Exception exception) => exception switch
    {
        // A transport option out of range or of the wrong type: the message names the option and what it accepts.
        OptionsValidationException invalid => string.Join(" ", invalid.Failures),

        // "Failed to bind to address http://127.0.0.1:5000: address already in use."
        IOException { InnerException: AddressInUseException } taken => taken.Message,
        AddressInUseException taken => taken.Message,
        _ when exception.InnerException is { } inner => Describe(inner),
        _ => null,
    };
}
